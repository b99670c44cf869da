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
	began time.Time
	ok    bool
}

// New returns an empty listing that goes by now.
func New[T any](now func() time.Time) *Listing[T] { return &Listing[T]{now: now} }

// Get returns the listing, fetching it anew when it is older than TTL.
// Callers at the same moment share one fetch; a failed fetch is not kept.
func (l *Listing[T]) Get(fetch func() (T, error)) (T, error) {
	v, _, err := l.GetAt(fetch)
	return v, err
}

// GetAt is Get, with when the listing's fetch began.
func (l *Listing[T]) GetAt(fetch func() (T, error)) (T, time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ok && l.now().Sub(l.at) < TTL {
		return l.value, l.began, nil
	}
	began := l.now()
	v, err := fetch()
	if err != nil {
		var zero T
		return zero, time.Time{}, err
	}
	l.value, l.at, l.began, l.ok = v, l.now(), began, true
	return v, began, nil
}

// Forget drops the listing: the storage changed.
func (l *Listing[T]) Forget() {
	l.mu.Lock()
	l.ok = false
	l.mu.Unlock()
}
