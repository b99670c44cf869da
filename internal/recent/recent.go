// Package recent keeps a listing of storage for a few seconds, so that a
// page loaded by many at once, or reloaded in a loop, lists the storage at
// most once per TTL.
package recent

import (
	"sync"
	"time"
)

// TTL is how long a listing is reused.
const TTL = 5 * time.Second

// Listing is a value fetched at most once per TTL.
type Listing[T any] struct {
	now   func() time.Time
	mu    sync.Mutex
	value T
	at    time.Time
	ok    bool
}

// New returns an empty listing that goes by now.
func New[T any](now func() time.Time) *Listing[T] { return &Listing[T]{now: now} }

// Get returns the listing, fetching it anew when it is older than TTL.
// Callers at the same moment share one fetch; a failed fetch is not kept.
func (l *Listing[T]) Get(fetch func() (T, error)) (T, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ok && l.now().Sub(l.at) < TTL {
		return l.value, nil
	}
	v, err := fetch()
	if err != nil {
		var zero T
		return zero, err
	}
	l.value, l.at, l.ok = v, l.now(), true
	return v, nil
}

// Forget drops the listing: the storage changed.
func (l *Listing[T]) Forget() {
	l.mu.Lock()
	l.ok = false
	l.mu.Unlock()
}
