package normalize

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// ErrBusy means as much layer work as the limits allow is running and
// waiting already: nothing was decided about the image, and the caller may
// try again shortly.
var ErrBusy = errors.New("too much layer work in progress")

// errNestedTurn is a piece of work that asks for a turn while it holds
// one. It would wait on itself: with as many such pieces as there are
// turns, every turn would wait for one of them. A turn is therefore taken
// only around reading and writing the cache; whatever may take one (a
// download, a rebuild) comes before it.
var errNestedTurn = errors.New("layer work asked for a turn while holding one")

// holdsTurn marks the context of work that holds a turn.
type holdsTurn struct{}

// WorkLimits bound the layer work: scans, repackagings and recompressions.
// Each holds a decompressor and maybe a compressor, whose memory is bounded
// by the layer limits (the zstd window above all); these bound how many
// hold theirs at once, and so what they take together.
type WorkLimits struct {
	// Running is how many run at once.
	Running int
	// Queued is how many more may wait for a turn; beyond,
	// the work fails with ErrBusy. A waiting piece holds no decoder: its
	// layer is fetched into the cache before it asks for a turn (the
	// downloads have bounds of their own, per upstream), and opened once
	// it has one.
	Queued int
}

// DefaultWorkLimits are what zero WorkLimits fields take.
func DefaultWorkLimits() WorkLimits { return WorkLimits{Running: 4, Queued: 128} }

func (l WorkLimits) withDefaults() WorkLimits {
	d := DefaultWorkLimits()
	if l.Running <= 0 {
		l.Running = d.Running
	}
	if l.Queued <= 0 {
		l.Queued = d.Queued
	}
	return l
}

// workQueue hands out turns to layer work, first come first served. A
// turn that ends goes to the first waiting piece directly, so the counts of
// running and waiting work are always what the limits check.
type workQueue struct {
	limits WorkLimits
	m      Metrics

	mu      sync.Mutex
	running int
	waiting []chan struct{} // closed when given a turn
}

func newWorkQueue(l WorkLimits, m Metrics) *workQueue {
	return &workQueue{limits: l.withDefaults(), m: m}
}

// turn waits for a turn to run, and returns the context to run it with
// (the work done under the turn uses it, so that a turn asked for under it
// is refused) and the function that ends it. It fails at once with ErrBusy
// when the queue is full, with errNestedTurn when ctx holds a turn
// already, or with ctx's error.
func (q *workQueue) turn(ctx context.Context) (context.Context, func(), error) {
	if ctx.Value(holdsTurn{}) != nil {
		return nil, nil, errNestedTurn
	}
	held := context.WithValue(ctx, holdsTurn{}, true)
	q.mu.Lock()
	if q.running < q.limits.Running && len(q.waiting) == 0 {
		q.running++
		q.mu.Unlock()
		q.m.LayerWorkInflight.Inc()
		return held, q.ender(), nil
	}
	if len(q.waiting) >= q.limits.Queued {
		q.mu.Unlock()
		q.m.LayerWorkRejected.Inc()
		return nil, nil, ErrBusy
	}
	given := make(chan struct{})
	q.waiting = append(q.waiting, given)
	q.mu.Unlock()
	q.m.LayerWorkQueued.Inc()
	select {
	case <-given:
		return held, q.ender(), nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	select {
	case <-given:
		// Given a turn as ctx ended: pass it on.
		q.mu.Unlock()
		q.ender()()
	default:
		q.waiting = slices.DeleteFunc(q.waiting, func(c chan struct{}) bool { return c == given })
		q.mu.Unlock()
		q.m.LayerWorkQueued.Dec()
	}
	return nil, nil, context.Cause(ctx)
}

// ender is the end of a running turn: it goes to the first waiting piece,
// if any.
func (q *workQueue) ender() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			if len(q.waiting) == 0 {
				q.running--
				q.m.LayerWorkInflight.Dec()
				return
			}
			next := q.waiting[0]
			q.waiting = q.waiting[1:]
			q.m.LayerWorkQueued.Dec()
			close(next)
		})
	}
}
