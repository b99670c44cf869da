package mirror

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// retryAfterNormalizing is the Retry-After sent with a 503 when
// normalization outlives the deadline.
const retryAfterNormalizing = 10 * time.Second

// ErrNotReady is the cause of the 503 a caller of Variant gets past its
// wait: the variant is still being made, and the work goes on.
var ErrNotReady = errors.New("the variant is still being made")

// engineError is what a client is answered for an error of the engine: a
// full layer work queue is 503 with Retry-After, as a full download queue
// is; the rest as it is.
func engineError(err error) error {
	if errors.Is(err, normalize.ErrBusy) {
		return errcode.Busy("too much layer work in progress; retry shortly", err)
	}
	return err
}

// Variant is the client's variant of m, an original the repository
// answered, for rules: what the engine makes of it, reading through its Source.
// With a wait, the request waits at most that long: past it the client gets
// 503 with Retry-After, the work goes on, and the next request gets its
// result at once. Without one (warm), the caller waits as long as it takes,
// and the work stops with ctx.
//
// A variant regnorm made is attested in the repository the first time it
// is answered (attest.go): the answer waits for that within what is left
// of its wait (a few milliseconds, usually), so a client that verifies the
// variant next finds its attestation; past it, the attestation is made in
// the background.
func (r *Repository) Variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error) {
	start := r.s.clock.Now()
	n, err := r.variant(ctx, m, rules, wait)
	if err == nil {
		left := time.Duration(0) // no wait: as long as ctx allows
		if wait > 0 {
			left = max(wait-r.s.clock.Now().Sub(start), 0)
		}
		r.attestWithin(ctx, m, n, left)
	}
	return n, err
}

func (r *Repository) variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error) {
	s := r.s
	start := s.clock.Now()
	if err := r.variantByOwner(ctx, m, rules, wait); err != nil {
		return normalize.Result{}, err
	}
	if wait > 0 {
		// What an owner that failed took is the client's too.
		wait = max(wait-s.clock.Now().Sub(start), time.Millisecond)
	}
	if wait <= 0 {
		n, err := s.engine.Normalize(ctx, r.Source(), m, rules)
		return n, engineError(err)
	}
	if !normalize.MayNeed(m, rules) {
		return normalize.Result{Manifest: m, Verdict: cache.Normalization{Original: m.Digest, MediaType: m.MediaType}}, nil
	}
	type result struct {
		n   normalize.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.engine.Normalize(context.WithoutCancel(ctx), r.Source(), m, rules)
		done <- result{n, err}
	}()
	expired := make(chan struct{})
	stop := s.clock.AfterFunc(wait, func() { close(expired) })
	defer stop()
	select {
	case res := <-done:
		return res.n, engineError(res.err)
	case <-expired:
		s.metrics.DeadlineExceeded.Inc()
		e := errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "regnorm is still normalizing this image; retry shortly", ErrNotReady)
		e.RetryAfter = retryAfterNormalizing
		return normalize.Result{}, e
	case <-ctx.Done():
		return normalize.Result{}, ctx.Err()
	}
}
