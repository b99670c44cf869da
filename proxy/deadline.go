package proxy

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

// retryAfterBusy is the Retry-After sent with a 503 when the layer work
// queue is full.
const retryAfterBusy = 5 * time.Second

// engineError is what a client is answered for an error of the engine: a
// full layer work queue is 503 with Retry-After, as a full download queue
// is; the rest as it is.
func engineError(err error) error {
	if errors.Is(err, normalize.ErrBusy) {
		e := errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "too much layer work in progress; retry shortly", err)
		e.RetryAfter = retryAfterBusy
		return e
	}
	return err
}

// deadlineFor is how long a client may wait for a manifest answer, from
// what its User-Agent says of its timeouts (docs/containerd.md):
//
//	containerd 1.4 – 1.6     no limit on response headers          patient deadline
//	1.7.0 – 1.7.9            CRI gives up after 1 min without progress   at most 50 s
//	1.7.10+, 2.0 – 2.2       the same after 5 min                       at most 4.5 min
//	2.3+, anything else      30 s response header timeout              the deadline (25 s)
func (s *Server) deadlineFor(userAgent string) time.Duration {
	v, ok := ruleset.Containerd(userAgent)
	if !ok {
		return s.deadline
	}
	major, minor, patch := v.Major, v.Minor, v.Patch
	switch {
	case major == 1 && minor < 7:
		return s.patientDeadline
	case major == 1 && minor == 7 && patch < 10:
		return min(s.patientDeadline, 50*time.Second)
	case major == 1 || (major == 2 && minor < 3):
		return min(s.patientDeadline, 4*time.Minute+30*time.Second)
	}
	return s.deadline
}

// variant is the client's variant of m, an original the repository
// answered, for rules: what the engine makes of it, reading through source.
// With a wait, the request waits at most that long: past it the client gets
// 503 with Retry-After, the work goes on, and the next request gets its
// result at once. Without one (warm), the caller waits as long as it takes,
// and the work stops with ctx.
func (r *repository) variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error) {
	s := r.s
	if wait <= 0 {
		n, err := s.engine.Normalize(ctx, r.source(), m, rules)
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
		n, err := s.engine.Normalize(context.WithoutCancel(ctx), r.source(), m, rules)
		done <- result{n, err}
	}()
	expired := make(chan struct{})
	stop := s.clock.AfterFunc(wait, func() { close(expired) })
	defer stop()
	select {
	case res := <-done:
		return res.n, engineError(res.err)
	case <-expired:
		s.metrics.deadlineExceeded.Inc()
		e := errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "regnorm is still normalizing this image; retry shortly", nil)
		e.RetryAfter = retryAfterNormalizing
		return normalize.Result{}, e
	case <-ctx.Done():
		return normalize.Result{}, ctx.Err()
	}
}
