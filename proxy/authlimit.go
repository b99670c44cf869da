package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// Failed authentication attempts are limited per client address. A bcrypt
// comparison costs tens of milliseconds of CPU by design: without a limit,
// one client could spend all of it, and guess passwords as fast as regnorm
// answers. The limit holds back only what would cost a comparison: a right
// token or a remembered pair is checked first and always gets in, so that
// one failing client does not lock out every other behind the same
// address (a NAT, a load balancer, a NodePort with externalTrafficPolicy
// Cluster). A wrong token is still a failure of its address.

// maxAttemptAddresses bounds the client addresses whose attempts are
// remembered. Past it, the addresses that do not fit share one allowance.
const maxAttemptAddresses = 10000

// DefaultAuthFailuresPerMinute is the allowance of failed attempts of one
// client address, at once and per minute.
const DefaultAuthFailuresPerMinute = 10

// attemptLimiter is a token bucket of failed attempts per client address:
// burst of them at once, one more every every. An attempt that costs a
// bcrypt comparison takes its token before the comparison and gives it
// back when the credentials were right, so that concurrent guesses cannot
// outrun the limit; a cheap failure (a wrong token) takes one afterwards.
type attemptLimiter struct {
	clock Clock
	burst float64
	every time.Duration

	mu      sync.Mutex
	buckets *simplelru.LRU[string, *attemptBucket]
	// overflow is the bucket of the addresses that found the table full
	// of buckets still in use: spread over more addresses, guesses still
	// cost no more than this one more allowance.
	overflow attemptBucket
}

type attemptBucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

func newAttemptLimiter(clock Clock, perMinute int) *attemptLimiter {
	if perMinute <= 0 {
		perMinute = DefaultAuthFailuresPerMinute
	}
	buckets, err := simplelru.NewLRU[string, *attemptBucket](maxAttemptAddresses, nil)
	if err != nil {
		panic(err)
	}
	l := &attemptLimiter{clock: clock, burst: float64(perMinute), every: time.Minute / time.Duration(perMinute), buckets: buckets}
	l.overflow.tokens = l.burst
	return l
}

// refill brings b up to now.
func (l *attemptLimiter) refill(b *attemptBucket, now time.Time) {
	if !b.at.IsZero() {
		b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	}
	b.at = now
}

// bucket returns the bucket of key, brought up to now: its own, a new
// one, or the overflow one when the table is full of buckets in use.
func (l *attemptLimiter) bucket(key string, now time.Time) *attemptBucket {
	if b, ok := l.buckets.Get(key); ok {
		l.refill(b, now)
		return b
	}
	if l.buckets.Len() >= maxAttemptAddresses {
		// The least recently used bucket has had the longest to refill: a
		// full one remembers nothing and makes room.
		_, oldest, _ := l.buckets.GetOldest()
		if l.refill(oldest, now); oldest.tokens < l.burst {
			l.refill(&l.overflow, now)
			return &l.overflow
		}
		l.buckets.RemoveOldest()
	}
	b := &attemptBucket{tokens: l.burst, at: now}
	l.buckets.Add(key, b)
	return b
}

// take spends one of key's attempts. It returns 0 when it did, else how
// long key must wait (and spends nothing).
func (l *attemptLimiter) take(key string) time.Duration {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) * float64(l.every))
	}
	b.tokens--
	return 0
}

// fail counts a failure that cost no comparison (a wrong token): nil, or
// the 429 of an address that had no failure left.
func (l *attemptLimiter) fail(key string) error {
	if wait := l.take(key); wait > 0 {
		return tooManyFailures(wait)
	}
	return nil
}

// giveBack returns an attempt take spent: the credentials were right.
func (l *attemptLimiter) giveBack(key string) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets.Peek(key)
	if !ok {
		b = &l.overflow
	}
	l.refill(b, now)
	b.tokens = min(l.burst, b.tokens+1)
	if ok && b.tokens >= l.burst {
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
