package flight_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/flight"
)

type ctxKey struct{}

// TestOneRunForAllCallers: callers that ask while the work runs share it;
// one that goes away leaves it running for the others, on a context that
// keeps the first caller's values.
func TestOneRunForAllCallers(t *testing.T) {
	t.Parallel()
	var g flight.Group[string]
	var runs atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	work := func(ctx context.Context) (string, error) {
		runs.Add(1)
		close(started)
		<-release
		if err := ctx.Err(); err != nil {
			return "", err
		}
		return ctx.Value(ctxKey{}).(string), nil
	}
	first := make(chan error, 1)
	go func() {
		_, err := g.Do(context.WithValue(context.Background(), ctxKey{}, "first's"), "k", work)
		first <- err
	}()
	<-started
	leaving, leave := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := g.Do(leaving, "k", func(context.Context) (string, error) { t.Error("a second run"); return "", nil })
		left <- err
	}()
	for flight.Waiters(&g, "k") != 2 {
		runtime.Gosched()
	}
	leave()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Errorf("the caller that left got %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("the caller that stayed got %v, want the work's result", err)
	}
	if runs.Load() != 1 {
		t.Errorf("%d runs, want 1", runs.Load())
	}
}

// TestWorkNobodyWaitsForIsCancelled: once the last caller has gone, the
// work's context is cancelled with ErrAbandoned, and the next caller starts
// the work anew.
func TestWorkNobodyWaitsForIsCancelled(t *testing.T) {
	t.Parallel()
	var g flight.Group[int]
	cause := make(chan error, 1)
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := g.Do(ctx, "k", func(ctx context.Context) (int, error) {
			close(started)
			<-ctx.Done()
			cause <- context.Cause(ctx)
			return 0, ctx.Err()
		})
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("the caller got %v", err)
	}
	if got := <-cause; !errors.Is(got, flight.ErrAbandoned) {
		t.Errorf("the work was cancelled with %v, want ErrAbandoned", got)
	}
	v, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { return 7, nil })
	if v != 7 || err != nil {
		t.Errorf("the next caller got %d, %v: want a run of its own", v, err)
	}
}

// TestPanicIsAnError: work that panics fails its callers, not the process.
func TestPanicIsAnError(t *testing.T) {
	t.Parallel()
	var g flight.Group[int]
	if _, err := g.Do(context.Background(), "k", func(context.Context) (int, error) { panic("boom") }); err == nil {
		t.Error("a panic was not an error")
	}
}

// manualTimer is an AfterFunc the test fires.
type manualTimer struct {
	fire    chan func()
	stopped atomic.Bool
}

func (m *manualTimer) afterFunc(_ time.Duration, f func()) func() bool {
	m.stopped.Store(false)
	m.fire <- f
	return func() bool { return !m.stopped.Swap(true) }
}

// TestGraceLetsACallerComeBack: with a grace, work whose last caller has
// gone goes on until the grace is over; a caller that comes back within it
// joins the same run, and once it is over with nobody back, the work is
// cancelled.
func TestGraceLetsACallerComeBack(t *testing.T) {
	t.Parallel()
	timer := &manualTimer{fire: make(chan func(), 1)}
	g := flight.Group[int]{Grace: time.Minute, AfterFunc: timer.afterFunc}
	var runs atomic.Int64
	started, release := make(chan struct{}, 1), make(chan struct{})
	cause := make(chan error, 1)
	work := func(ctx context.Context) (int, error) {
		runs.Add(1)
		started <- struct{}{}
		select {
		case <-release:
			return 1, nil
		case <-ctx.Done():
			cause <- context.Cause(ctx)
			return 0, ctx.Err()
		}
	}
	leaveAfterStart := func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { g.Do(ctx, "k", work); close(done) }()
		for flight.Waiters(&g, "k") != 1 {
			runtime.Gosched()
		}
		cancel()
		<-done
	}
	leaveAfterStart()
	<-started
	fire := <-timer.fire // the grace runs; the caller comes back within it
	back := make(chan int, 1)
	go func() { v, _ := g.Do(context.Background(), "k", work); back <- v }()
	for flight.Waiters(&g, "k") != 1 {
		runtime.Gosched()
	}
	fire() // too late: stopped when the caller came back
	close(release)
	if v := <-back; v != 1 || runs.Load() != 1 {
		t.Errorf("the caller that came back got %d after %d runs, want the first run's 1", v, runs.Load())
	}

	// Nobody comes back: cancelled when the grace is over.
	release = make(chan struct{})
	leaveAfterStart()
	<-started
	(<-timer.fire)()
	if got := <-cause; !errors.Is(got, flight.ErrAbandoned) {
		t.Errorf("the work nobody came back for was cancelled with %v, want ErrAbandoned", got)
	}
}
