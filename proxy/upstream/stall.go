package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// ErrStalled is why an upstream response was abandoned: it sent nothing for
// the stall timeout.
var ErrStalled = errors.New("upstream stopped sending")

// stallGuard ends an upstream response body that stops: a Read that waits
// longer than timeout cancels the request with ErrStalled. Only time spent
// inside Read counts, so a slow reader is never mistaken for a slow upstream.
type stallGuard struct {
	body    io.ReadCloser
	timeout time.Duration
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	stalled atomic.Bool
}

func newStallGuard(body io.ReadCloser, timeout time.Duration, cancel context.CancelCauseFunc) *stallGuard {
	g := &stallGuard{body: body, timeout: timeout, cancel: cancel}
	g.timer = time.AfterFunc(timeout, func() {
		g.stalled.Store(true)
		cancel(ErrStalled)
	})
	g.timer.Stop()
	return g
}

func (g *stallGuard) Read(p []byte) (int, error) {
	g.timer.Reset(g.timeout)
	n, err := g.body.Read(p)
	g.timer.Stop()
	if err != nil && err != io.EOF && g.stalled.Load() {
		return n, fmt.Errorf("%w for %s", ErrStalled, g.timeout)
	}
	return n, err
}

func (g *stallGuard) Close() error {
	g.timer.Stop()
	err := g.body.Close()
	g.cancel(nil)
	return err
}
