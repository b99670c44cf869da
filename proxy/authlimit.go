package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// Failed authentication attempts are limited per client address, and the
// bcrypt comparisons of all clients together. A comparison costs tens of
// milliseconds of CPU by design: without a limit, clients could spend all
// of it, and guess passwords as fast as regnorm answers. The limits hold
// back only what would cost a comparison: a right token or a remembered
// pair is checked first and always gets in, so that one failing client
// does not lock out every other behind the same address (a NAT, a load
// balancer, a NodePort with externalTrafficPolicy Cluster), and no number
// of guesses slows those clients down.
//
// Three limiters keep the allowances: bcrypt comparisons (of client
// passwords), wrong client tokens and wrong node report tokens. A wrong
// token costs no comparison, so its failures are counted apart: failing
// tokens from any number of addresses take nothing from a newcomer's
// allowance of comparisons.

// maxAttemptAddresses bounds the client addresses whose attempts each
// limiter remembers. Past it the least recently used is forgotten; for
// comparisons it is always one with its whole allowance back (see
// passwordChecksPerMinute), so that no newcomer has to share an allowance
// that others spent.
const maxAttemptAddresses = 10000

// DefaultAuthFailuresPerMinute is the allowance of failed attempts of one
// client address, at once and per minute.
const DefaultAuthFailuresPerMinute = 10

// passwordChecksPerMinute bounds the bcrypt comparisons of all addresses
// together: that many at once, and that many more a minute, so at most
// twice it in any minute. An address's allowance refills whole within a
// minute of its last attempt, and twice this is less than
// maxAttemptAddresses: however many addresses take turns, the least
// recently used one has made no attempt for a minute when the table is
// full, and forgetting it forgets nothing it owes. Past it a comparison is
// refused with 503, as when too many wait for a turn (passwordTurns).
const passwordChecksPerMinute = 4000

// attemptLimiter is a token bucket of attempts per client address: burst
// of them at once, one more every every; and, for comparisons, one of all
// addresses together (all). An attempt that costs a bcrypt comparison takes
// its token before the comparison and gives it back when the credentials
// were right, so that concurrent guesses cannot outrun the limit; a cheap
// failure (a wrong token) takes one afterwards.
type attemptLimiter struct {
	clock Clock
	burst float64
	every time.Duration
	// all, when set, is the allowance of every address together; its
	// tokens are never given back (see passwordChecksPerMinute).
	all *attemptBucket

	mu      sync.Mutex
	buckets *simplelru.LRU[string, *attemptBucket]
}

type attemptBucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// newAttemptLimiter makes a limiter of perMinute attempts a minute by
// address; with comparisons, of passwordChecksPerMinute of all addresses
// together too.
func newAttemptLimiter(clock Clock, perMinute int, comparisons bool) *attemptLimiter {
	if perMinute <= 0 {
		perMinute = DefaultAuthFailuresPerMinute
	}
	buckets, err := simplelru.NewLRU[string, *attemptBucket](maxAttemptAddresses, nil)
	if err != nil {
		panic(err)
	}
	l := &attemptLimiter{clock: clock, burst: float64(perMinute), every: time.Minute / time.Duration(perMinute), buckets: buckets}
	if comparisons {
		l.all = &attemptBucket{tokens: passwordChecksPerMinute}
	}
	return l
}

// refill brings b, of burst tokens and one more every every, up to now.
func refill(b *attemptBucket, burst float64, every time.Duration, now time.Time) {
	if !b.at.IsZero() {
		b.tokens = min(burst, b.tokens+float64(now.Sub(b.at))/float64(every))
	}
	b.at = now
}

// take spends one of key's attempts (and one of all's). It returns the
// function that gives key's back, or the 429 of an address with no attempt
// left, or the 503 of comparisons past passwordChecksPerMinute; then it
// spends nothing. Only an attempt spent uses key's place in the table:
// that is what bounds how many addresses a minute can hold one.
func (l *attemptLimiter) take(key string) (giveBack func(), err error) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, known := l.buckets.Peek(key)
	if known {
		if refill(b, l.burst, l.every, now); b.tokens < 1 {
			return nil, tooManyFailures(time.Duration((1 - b.tokens) * float64(l.every)))
		}
	}
	if l.all != nil {
		every := time.Minute / passwordChecksPerMinute
		if refill(l.all, passwordChecksPerMinute, every, now); l.all.tokens < 1 {
			return nil, passwordChecksBusy(time.Duration((1 - l.all.tokens) * float64(every)))
		}
		l.all.tokens--
	}
	if known {
		l.buckets.Get(key) // now the most recently used
	} else {
		b = &attemptBucket{tokens: l.burst, at: now}
		l.buckets.Add(key, b) // forgets the least recently used when full
	}
	b.tokens--
	return func() { l.giveBack(key, b) }, nil
}

// fail counts a failure that cost no comparison (a wrong token): nil, or
// the 429 of an address that had no failure left.
func (l *attemptLimiter) fail(key string) error {
	_, err := l.take(key)
	return err
}

// giveBack returns an attempt take spent from b, key's bucket: the
// credentials were right, or no comparison ran.
func (l *attemptLimiter) giveBack(key string, b *attemptBucket) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	refill(b, l.burst, l.every, now)
	b.tokens = min(l.burst, b.tokens+1)
	if cur, ok := l.buckets.Peek(key); ok && cur == b && b.tokens >= l.burst {
		l.buckets.Remove(key) // nothing to remember
	}
}

// tooManyFailures is the answer to an address past its allowance, to
// credentials that would cost a comparison or were wrong.
func tooManyFailures(wait time.Duration) error {
	e := errcode.New(http.StatusTooManyRequests, errcode.TooManyRequests, "too many failed authentication attempts from this address: try again later", nil)
	e.RetryAfter = max(wait, time.Second)
	return e
}

// passwordChecksBusy is the answer to credentials that would cost a
// comparison when comparisons are all spent (passwordChecksPerMinute) or
// too many wait for a turn (passwordTurns): nothing was decided about
// them. Tokens and remembered pairs still get in.
func passwordChecksBusy(wait time.Duration) error {
	e := errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "too many password checks in progress: try again shortly (a token, or a user:password pair regnorm verified before, gets in at once)", nil)
	e.RetryAfter = max(wait, time.Second)
	return e
}

// maxQueuedPasswordChecks is how many comparisons may wait for a turn;
// beyond, the request gets 503 at once.
const maxQueuedPasswordChecks = 64

// passwordTurns bounds the bcrypt comparisons that run at once, of every
// client together, to half the CPUs Go runs on (at least one): however
// many addresses guess, they cannot take more than that share of the CPU
// from the requests that carry a token or a remembered pair, which never
// wait for a turn. Comparisons wait in turn (first come, first served),
// within their request's context.
type passwordTurns struct {
	slots   chan struct{}
	waiting atomic.Int64
	m       *Metrics
}

func newPasswordTurns(m *Metrics) *passwordTurns {
	return &passwordTurns{slots: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)), m: m}
}

// turn waits for a turn to compare, and returns the function that ends it.
// It fails at once with passwordChecksBusy when maxQueuedPasswordChecks
// wait already, or with ctx's error.
func (t *passwordTurns) turn(ctx context.Context) (done func(), err error) {
	select {
	case t.slots <- struct{}{}:
		return t.started(), nil
	default:
	}
	if t.waiting.Add(1) > maxQueuedPasswordChecks {
		t.waiting.Add(-1)
		t.m.passwordChecksRejected.Inc()
		return nil, passwordChecksBusy(time.Second)
	}
	t.m.passwordChecksQueued.Inc()
	defer func() {
		t.waiting.Add(-1)
		t.m.passwordChecksQueued.Dec()
	}()
	select {
	case t.slots <- struct{}{}:
		return t.started(), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (t *passwordTurns) started() func() {
	t.m.passwordChecksInflight.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.m.passwordChecksInflight.Dec()
			<-t.slots
		})
	}
}

// attemptKey is the client address attempts are counted by: the IPv4
// address, or the /64 of an IPv6 one (one host commonly holds a whole
// /64).
func attemptKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip = ip.Unmap(); ip.Is6() {
		p, _ := ip.WithZone("").Prefix(64)
		return p.String()
	}
	return ip.String()
}
