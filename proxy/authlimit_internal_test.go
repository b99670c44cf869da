package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// TestAttemptLimiterIsBounded: however many addresses fail, at most
// maxAttemptAddresses buckets are kept; past it, the least recently used
// address is forgotten and a newcomer gets an allowance of its own.
func TestAttemptLimiterIsBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) { // time moves only when the test sleeps
		l := newAttemptLimiter(SystemClock{}, 2, false)
		for i := range maxAttemptAddresses + 10 {
			if err := l.fail(fmt.Sprintf("10.0.%d.%d", i>>8, i&255)); err != nil {
				t.Fatalf("address %d's first failure: %v", i, err)
			}
			if n := l.buckets.Len(); n > maxAttemptAddresses {
				t.Fatalf("%d buckets, more than %d", n, maxAttemptAddresses)
			}
		}
		for i := range 2 {
			if err := l.fail("192.168.0.1"); err != nil {
				t.Fatalf("a newcomer's failure %d: %v", i+1, err)
			}
		}
		if err := l.fail("192.168.0.1"); errcode.StatusOf(err) != http.StatusTooManyRequests {
			t.Fatalf("a newcomer past its own allowance: %v, want 429", err)
		}
	})
}

// TestComparisonsNeverForgetAnAddressThatOwes: comparisons are bounded
// for all addresses together (passwordChecksPerMinute), so tightly that
// the table of addresses never has to forget one that has not got its
// whole allowance back: each comparison from a new address, as fast as
// the bounds let them through for five minutes, finds the least recently
// used address (the one it makes room by forgetting) refilled. Past the
// global bound, a comparison is refused with 503 and Retry-After.
func TestComparisonsNeverForgetAnAddressThatOwes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) { // time moves only when the test sleeps
		l := newAttemptLimiter(SystemClock{}, DefaultAuthFailuresPerMinute, true)
		next, refused := 0, 0
		for range 5 * 60 * 10 { // five minutes in steps of 100 ms
			time.Sleep(100 * time.Millisecond)
			for {
				if l.buckets.Len() == maxAttemptAddresses {
					_, oldest, _ := l.buckets.GetOldest()
					b := *oldest
					if refill(&b, l.burst, l.every, time.Now()); b.tokens < l.burst {
						t.Fatalf("after %d addresses, the table would forget one that owes %.2f attempts", next, l.burst-b.tokens)
					}
				}
				_, err := l.take(fmt.Sprintf("2001:db8:%x::/64", next))
				if err != nil {
					var e *errcode.Error
					if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.RetryAfter <= 0 {
						t.Fatalf("a comparison past the global bound: %v, want 503 with Retry-After", err)
					}
					refused++
					break
				}
				next++
			}
		}
		// The first step starts the clock: a tenth of a second's refill short.
		if want := passwordChecksPerMinute * 6; next < want-10 || next > want || refused == 0 {
			t.Fatalf("%d comparisons in five minutes (%d refused), want %d: the whole global allowance, and no more", next, refused, want)
		}
		if l.buckets.Len() != maxAttemptAddresses {
			t.Fatalf("%d addresses remembered, want the table full (%d)", l.buckets.Len(), maxAttemptAddresses)
		}
	})
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
	synctest.Test(t, func(t *testing.T) { // time moves only when the test sleeps
		a := newClientAuth(&ClientAuth{Users: map[string][]byte{"alice": []byte("$2a$04$notarealhashnotarealhashnotarealhashnotarealhashnot")}},
			SystemClock{}, 10, NewMetrics(prometheus.NewRegistry()))
		a.compare = func(hash, password []byte) error { return nil } // every password is right
		for i := range 2*maxVerified + 10 {
			time.Sleep(time.Minute / passwordChecksPerMinute) // within the global bound
			if err := a.userOK(context.Background(), fmt.Sprintf("10.%d.%d.1", i>>8, i&255), "alice", fmt.Sprint("pass-", i)); err != nil {
				t.Fatal(err)
			}
			if len(a.verified) > maxVerified {
				t.Fatalf("%d pairs remembered, more than %d", len(a.verified), maxVerified)
			}
		}
	})
}
