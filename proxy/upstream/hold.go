package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// An upstream that answers 429, or says its budget is spent
// (RateLimit-Remaining: 0), is held: until the time it gave, the requests
// it counts against that budget (manifests, by tag or digest, GET and
// HEAD) are not sent, and their callers get 429 TOOMANYREQUESTS with
// Retry-After at once; a tag past its TTL is then served from its record
// (mirror). Every replica honours a hold another one learnt: it is written
// to the shared cache (HoldStore) and read from there at most once per
// holdRefresh. Blobs are not held: Docker Hub's budget counts manifests,
// and a blob refused 429 is answered as before (retried, or passed on).
const (
	// maxHold bounds a hold, whatever the upstream says; a record that
	// holds longer is ignored as damaged, so that no record stops an
	// upstream for longer either.
	maxHold = time.Hour
	// defaultHold is the hold after a 429 without a Retry-After, or a
	// budget at zero without a time it is renewed.
	defaultHold = time.Minute
	// holdRefresh is how often the shared record is read, per upstream.
	holdRefresh = 5 * time.Second
	// holdStoreTimeout bounds one read or write of the shared record.
	holdStoreTimeout = 5 * time.Second
	// holdSkew is how far another replica's clock may be ahead: a record
	// up to maxHold+holdSkew ahead is a hold (clamped to maxHold), beyond
	// it a damaged record.
	holdSkew = 5 * time.Minute
)

// HoldStore keeps each upstream's hold where every replica reads it (a
// *cache.Store): the time until which nobody asks that upstream what it
// counts. A missing record is the zero time and no error.
type HoldStore interface {
	GetHold(ctx context.Context, upstream string) (time.Time, error)
	PutHold(ctx context.Context, upstream string, until time.Time) error
}

// rateHold is one upstream's hold, as this replica knows it: one for the
// upstream, or, when it forwards credentials, one for each client's (a
// client's spent budget is its own; anonymous clients share one).
type rateHold struct {
	// name is what the shared record is kept under: the upstream's name,
	// and a forwarding client's identity after an '@'.
	name       string
	mu         sync.Mutex
	until      time.Time // nothing counted is sent before
	noted      time.Time // the end last logged and given to share
	lastRead   time.Time // when the shared record was last read
	lastRecord time.Time // what it said then
	store      HoldStore // nil: this replica's own hold only
	// writing makes one write of the record at a time, each of the end
	// known when it is made: a shorter hold's write cannot land after a
	// longer one's.
	writing sync.Mutex
}

// held is the 429 a request the upstream counts gets while u is held, nil
// when it may be sent. The shared record is read at most once per
// holdRefresh, by one caller; the others go by what is known.
func (u *Registry) held(ctx context.Context) error {
	h, now := u.hold, u.now()
	h.mu.Lock()
	read := h.store != nil && now.Sub(h.lastRead) >= holdRefresh
	if read {
		h.lastRead = now
	}
	h.mu.Unlock()
	if read {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), holdStoreTimeout)
		until, err := h.store.GetHold(rctx, h.name)
		cancel()
		switch {
		case err != nil:
			// Storage that fails holds nothing: the upstream answers for
			// itself.
			u.log.Warn("reading the upstream's rate-limit hold failed", "error", err)
		case until.After(now.Add(maxHold + holdSkew)):
			// No replica writes a hold longer than maxHold (give or take
			// its clock): this record is damaged, and would hold the
			// upstream again at each read.
			u.log.Warn("ignoring an upstream rate-limit hold beyond the longest one", "until", until, "max", maxHold)
		case until.After(now) && h.newRecord(until):
			// Clamped once per record: read again, the same record does
			// not push the hold past maxHold from the first reading.
			h.extend(earlier(until, now.Add(maxHold)))
		}
	}
	h.mu.Lock()
	until := h.until
	h.mu.Unlock()
	if !until.After(now) {
		return nil
	}
	u.metrics.held.WithLabelValues(u.name).Inc()
	return heldError(u.name, until.Sub(now), nil)
}

func heldError(name string, wait time.Duration, cause error) *errcode.Error {
	e := errcode.New(http.StatusTooManyRequests, errcode.TooManyRequests,
		"upstream "+name+" rate limit: not asked again before Retry-After", cause)
	e.RetryAfter = max(wait, time.Second)
	return e
}

// extend holds until t, unless a longer hold is known; it reports whether
// the hold's end moved by holdRefresh or more since it was last noted
// (what is worth a log line and a write of the shared record: an upstream
// that says "budget at zero" on every answer moves it a little each time).
func (h *rateHold) extend(t time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.After(h.until) {
		h.until = t
	}
	if h.until.Sub(h.noted) < holdRefresh {
		return false
	}
	h.noted = h.until
	return true
}

// newRecord reports whether the shared record says until for the first
// time, and remembers it.
func (h *rateHold) newRecord(until time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if until.Equal(h.lastRecord) {
		return false
	}
	h.lastRecord = until
	return true
}

// noteHold learns a hold from an upstream's answer: a 429, or a budget at
// zero (RateLimit-Remaining: 0). Its length is the answer's Retry-After,
// else its RateLimit-Reset (seconds), else defaultHold; at most maxHold. A
// new hold is written for the other replicas before the answer is acted
// on.
func (u *Registry) noteHold(ctx context.Context, resp *http.Response) {
	remaining, _, ok := parseRateLimit(resp.Header.Get("RateLimit-Remaining"))
	if resp.StatusCode != http.StatusTooManyRequests && (!ok || remaining > 0) {
		return
	}
	now := u.now()
	wait := retryAfter(resp.Header.Get("Retry-After"), now)
	if wait <= 0 {
		if s, err := strconv.ParseUint(resp.Header.Get("RateLimit-Reset"), 10, 32); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
	}
	if wait <= 0 {
		wait = defaultHold
	}
	until := now.Add(min(wait, maxHold))
	if !u.hold.extend(until) {
		return
	}
	u.log.Warn("upstream rate limit: holding requests it counts", "until", u.hold.heldUntil(now), "status", resp.StatusCode)
	if u.hold.store != nil {
		u.hold.share(ctx, now, u.log)
	}
}

// share writes h's end for the other replicas, one write at a time, each
// of the end known when it is made; an end another replica recorded that
// is later stands, and is not written over (nor clamped: that is for this
// replica's own hold).
func (h *rateHold) share(ctx context.Context, now time.Time, log *slog.Logger) {
	h.writing.Lock()
	defer h.writing.Unlock()
	until := h.heldUntil(now)
	if until.IsZero() {
		return
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), holdStoreTimeout)
	defer cancel()
	// S3 has no compare-and-swap: reading first closes most of the window.
	if theirs, err := h.store.GetHold(wctx, h.name); err == nil && !theirs.Before(until) && !theirs.After(now.Add(maxHold+holdSkew)) {
		h.extend(earlier(theirs, now.Add(maxHold)))
		return
	}
	if err := h.store.PutHold(wctx, h.name, until); err != nil {
		log.Warn("sharing the upstream's rate-limit hold failed", "error", fmt.Errorf("put hold: %w", err))
	}
}

// HeldUntil is when the upstream's rate-limit hold ends, as this replica
// knows it (its own, or another replica's it read); the zero time when it
// is not held. Holds of forwarded clients' own credentials are theirs, and
// not shown.
func (u *Registry) HeldUntil() time.Time { return u.hold.heldUntil(u.now()) }

// heldUntil is when h ends, the zero time when it has ended by now.
func (h *rateHold) heldUntil(now time.Time) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.until.After(now) {
		return time.Time{}
	}
	return h.until
}

// earlier is the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
