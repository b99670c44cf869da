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

// WorkLimits bound the layer work: scans, repackagings and recompressions.
// Each holds a decompressor and maybe a compressor, whose memory is bounded
// by the layer limits (the zstd window above all); these bound how many
// hold theirs at once, and so what they take together.
type WorkLimits struct {
	// Running is how many run at once.
	Running int
	// Queued is how many more may wait for a turn; beyond, the work fails
	// with ErrBusy. A waiting piece holds nothing yet: its layer is opened
	// once it has its turn.
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

// turn waits for a turn to run, and returns the function that ends it. It
// fails at once with ErrBusy when the queue is full, or with ctx's error.
func (q *workQueue) turn(ctx context.Context) (done func(), err error) {
	q.mu.Lock()
	if q.running < q.limits.Running && len(q.waiting) == 0 {
		q.running++
		q.mu.Unlock()
		q.m.LayerWorkInflight.Inc()
		return q.ender(), nil
	}
	if len(q.waiting) >= q.limits.Queued {
		q.mu.Unlock()
		q.m.LayerWorkRejected.Inc()
		return nil, ErrBusy
	}
	given := make(chan struct{})
	q.waiting = append(q.waiting, given)
	q.mu.Unlock()
	q.m.LayerWorkQueued.Inc()
	select {
	case <-given:
		return q.ender(), nil
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
	return nil, context.Cause(ctx)
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
