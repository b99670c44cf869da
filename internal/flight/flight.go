// Package flight runs a piece of work once for every caller that asks for
// it while it runs (single-flight), on a context of its own: one caller
// going away does not fail the others, as it would if the work ran on that
// caller's context, and the work is cancelled once every caller has gone
// (after a grace, for a caller that retries), so that what nobody waits for
// any more stops and lets go of what it holds (an upstream connection, a
// body half read). It is the single-flight of golang.org/x/sync with the
// callers counted.
//
// It is pure: standard library only.
package flight

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// ErrAbandoned is the cause the work's context is cancelled with when
// every caller waiting for it has gone.
var ErrAbandoned = errors.New("every caller waiting for the work has gone")

// Group runs work by key. The zero Group is ready to use, and cancels work
// as soon as its last caller has gone; it holds only the work that runs.
type Group[T any] struct {
	// Grace is how long work goes on once its last caller has gone, for a
	// caller that retries to find it; then it is cancelled.
	Grace time.Duration
	// AfterFunc is time.AfterFunc (when nil), or a test clock's; stop is
	// its Stop.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)

	mu    sync.Mutex
	calls map[string]*call[T]
}

type call[T any] struct {
	done     chan struct{}
	val      T
	err      error
	waiters  int
	cancel   context.CancelCauseFunc
	orphaned func() bool // stops the grace timer, while it runs
}

// Do returns the result of fn for key: fn's own, run now, or that of the
// fn already running for key. fn runs on a context that keeps the values of
// the ctx of the caller that started it (a request's budget, its logger)
// but not its cancellation, and that is cancelled with ErrAbandoned once
// every caller waiting has gone and Grace has passed with none coming
// back; a caller whose ctx ends gets ctx's error at once. A caller that
// comes after that starts fn again.
func (g *Group[T]) Do(ctx context.Context, key string, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*call[T]{}
	}
	c, ok := g.calls[key]
	if ok && c.orphaned != nil {
		if !c.orphaned() {
			ok = false // its grace is over: it is being cancelled
		}
		c.orphaned = nil
	}
	if !ok {
		fctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		c = &call[T]{done: make(chan struct{}), cancel: cancel}
		g.calls[key] = c
		go g.run(fctx, key, c, fn)
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		g.mu.Lock()
		c.waiters--
		g.mu.Unlock()
		return c.val, c.err
	case <-ctx.Done():
		g.mu.Lock()
		defer g.mu.Unlock()
		if c.waiters--; c.waiters == 0 {
			g.orphan(key, c)
		}
		return zero, ctx.Err()
	}
}

// orphan cancels c, whose last caller has gone, once Grace has passed with
// none coming back. Called with g.mu held.
func (g *Group[T]) orphan(key string, c *call[T]) {
	abandon := func() {
		c.cancel(ErrAbandoned)
		if g.calls[key] == c {
			delete(g.calls, key) // nobody joins work that is being cancelled
		}
	}
	if g.Grace <= 0 {
		abandon()
		return
	}
	afterFunc := g.AfterFunc
	if afterFunc == nil {
		afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	c.orphaned = afterFunc(g.Grace, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if c.waiters == 0 {
			abandon()
		}
	})
}

func (g *Group[T]) run(ctx context.Context, key string, c *call[T], fn func(ctx context.Context) (T, error)) {
	defer func() {
		if r := recover(); r != nil {
			c.err = fmt.Errorf("flight %s panicked: %v\n%s", key, r, debug.Stack())
		}
		c.cancel(nil)
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		if c.orphaned != nil {
			c.orphaned()
			c.orphaned = nil
		}
		g.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn(ctx)
}
