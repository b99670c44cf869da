package normalize

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestWorkQueue: turns go first come first served, a full queue refuses at
// once, a waiter that gives up leaves its place, and an ended turn goes to
// the next waiter with the gauges saying so at every step.
func TestWorkQueue(t *testing.T) {
	t.Parallel()
	m := Metrics{LayerWorkInflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "i"}), LayerWorkQueued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "q"}),
		LayerWorkRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "r"})}
	q := newWorkQueue(WorkLimits{Running: 1, Queued: 2}, m)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.LayerWorkInflight, m.LayerWorkQueued, m.LayerWorkRejected)
	value := func(name string) float64 {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name {
				s := f.GetMetric()[0]
				return s.GetGauge().GetValue() + s.GetCounter().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	gauges := func(running, waiting float64) {
		t.Helper()
		if r, w := value("i"), value("q"); r != running || w != waiting {
			t.Fatalf("running %v, waiting %v; want %v and %v", r, w, running, waiting)
		}
	}
	ctx := context.Background()
	heldA, endA, err := q.turn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Work that holds a turn is refused another at once: it would wait on
	// itself.
	if _, _, err := q.turn(heldA); !errors.Is(err, errNestedTurn) {
		t.Fatalf("a turn under a turn: %v, want errNestedTurn", err)
	}
	gauges(1, 0)
	type result struct {
		done func()
		err  error
	}
	cctx, cancel := context.WithCancel(ctx)
	b, c := make(chan result, 1), make(chan result, 1)
	go func() { _, done, err := q.turn(cctx); b <- result{done, err} }()
	waitQueued(t, q, 1)
	go func() { _, done, err := q.turn(ctx); c <- result{done, err} }()
	waitQueued(t, q, 2)
	gauges(1, 2)
	if _, _, err := q.turn(ctx); !errors.Is(err, ErrBusy) || value("r") != 1 {
		t.Fatalf("past the queue: %v", err)
	}
	cancel()
	if r := <-b; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a waiter that gave up: %v", r.err)
	}
	gauges(1, 1)
	endA()
	endA() // once only
	r := <-c
	if r.err != nil {
		t.Fatal(r.err)
	}
	gauges(1, 0)
	r.done()
	gauges(0, 0)
}

// waitQueued waits until n pieces wait for a turn, and fails the test if
// they do not within a minute: a bound on liveness, never a verdict on
// speed.
func waitQueued(t *testing.T, q *workQueue, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		q.mu.Lock()
		got := len(q.waiting)
		q.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %d pieces to wait for a turn: %d do", n, got)
		}
		time.Sleep(time.Millisecond)
	}
}
