package proxy

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// stepClock is a clock that moves only when told to.
type stepClock struct{ now time.Time }

func (c *stepClock) Now() time.Time                              { return c.now }
func (c *stepClock) After(time.Duration) <-chan time.Time        { return nil }
func (c *stepClock) AfterFunc(time.Duration, func()) func() bool { return func() bool { return false } }

// TestAttemptLimiterIsBounded: however many addresses fail, at most
// maxAttemptAddresses buckets are kept. When they are all in use, the
// addresses that do not fit share one more allowance (so spreading guesses
// over addresses buys nothing more). Buckets that have refilled make room.
func TestAttemptLimiterIsBounded(t *testing.T) {
	t.Parallel()
	clk := &stepClock{now: time.Unix(1e9, 0)}
	l := newAttemptLimiter(clk, 2)
	for i := range maxAttemptAddresses {
		if wait := l.take(fmt.Sprintf("10.0.%d.%d", i>>8, i&255)); wait != 0 {
			t.Fatalf("address %d's first failure: wait %v", i, wait)
		}
	}
	if n := l.buckets.Len(); n != maxAttemptAddresses {
		t.Fatalf("%d buckets, want %d", n, maxAttemptAddresses)
	}
	// The table is full of buckets in use: newcomers share the overflow.
	for i := range 2 {
		if wait := l.take(fmt.Sprintf("192.168.0.%d", i)); wait != 0 {
			t.Fatalf("newcomer %d: wait %v", i, wait)
		}
	}
	if wait := l.take("192.168.0.9"); wait != 30*time.Second {
		t.Fatalf("a newcomer past the shared allowance: wait %v, want 30s", wait)
	}
	if n := l.buckets.Len(); n != maxAttemptAddresses {
		t.Fatalf("%d buckets, want %d", n, maxAttemptAddresses)
	}
	// A minute on, every bucket is full again: a newcomer gets its own.
	clk.now = clk.now.Add(time.Minute)
	l.take("192.168.0.9")
	if _, ok := l.buckets.Peek("192.168.0.9"); !ok || l.buckets.Len() != maxAttemptAddresses {
		t.Fatalf("a refilled bucket did not make room (%d buckets)", l.buckets.Len())
	}
}

// TestAttemptKey: attempts are counted by IPv4 address, or by the /64 of
// an IPv6 one.
func TestAttemptKey(t *testing.T) {
	t.Parallel()
	for remote, want := range map[string]string{
		"10.1.2.3:5555":               "10.1.2.3",
		"[::ffff:10.1.2.3]:5555":      "10.1.2.3",
		"[2001:db8:1:2:3:4:5:6]:5555": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:1":    "2001:db8:1:2::/64",
		"[fe80::1%eth0]:1":            "fe80::/64",
		"not-an-address":              "not-an-address",
	} {
		r := httptest.NewRequest("GET", "/v2/", nil)
		r.RemoteAddr = remote
		if got := attemptKey(r); got != want {
			t.Errorf("%s: %q, want %q", remote, got, want)
		}
	}
}

// TestVerifiedPairsAreBounded: the remembered user:password pairs stay
// within maxVerified, however many right pairs come.
func TestVerifiedPairsAreBounded(t *testing.T) {
	t.Parallel()
	a := newClientAuth(&ClientAuth{Users: map[string][]byte{"alice": []byte("$2a$04$notarealhashnotarealhashnotarealhashnotarealhashnot")}},
		newAttemptLimiter(&stepClock{now: time.Unix(1e9, 0)}, 10))
	a.compare = func(hash, password []byte) error { return nil } // every password is right
	for i := range 2*maxVerified + 10 {
		if err := a.userOK("10.0.0.1", "alice", fmt.Sprint("pass-", i)); err != nil {
			t.Fatal(err)
		}
		if len(a.verified) > maxVerified {
			t.Fatalf("%d pairs remembered, more than %d", len(a.verified), maxVerified)
		}
	}
}
