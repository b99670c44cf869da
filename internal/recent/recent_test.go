package recent

import (
	"errors"
	"testing"
	"time"
)

// TestListingIsReusedForTTL: within TTL a listing is served again; past
// it, or once forgotten, it is fetched anew; a failed fetch is not kept.
func TestListingIsReusedForTTL(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := New[int](func() time.Time { return now })
	fetches := 0
	fetch := func() (int, error) { fetches++; return fetches, nil }
	get := func(want int) {
		t.Helper()
		if v, err := l.Get(fetch); err != nil || v != want {
			t.Fatalf("Get = %d, %v; want %d", v, err, want)
		}
	}
	get(1)
	now = now.Add(TTL - time.Millisecond)
	get(1)
	now = now.Add(time.Millisecond)
	get(2)
	l.Forget()
	get(3)
	boom := errors.New("boom")
	l.Forget()
	if _, err := l.Get(func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	get(4)
}
