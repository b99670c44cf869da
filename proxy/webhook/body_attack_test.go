package webhook

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/proxy/ruleset"
)

type noPins struct{}

func (noPins) Pin(context.Context, digest.Digest) error { return nil }

// stallingBody sends the start of an AdmissionReview, then nothing until
// release is closed: a slow client (or one that sends 4 MiB slowly).
type stallingBody struct {
	prefix  io.Reader
	release <-chan struct{}
	stalled *atomic.Int64
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if n, err := b.prefix.Read(p); n > 0 || !errors.Is(err, io.EOF) {
		return n, err
	}
	b.stalled.Add(1)
	<-b.release
	b.stalled.Add(-1)
	return 0, io.EOF
}

// TestWebhookBoundsTheBodiesItHolds: the webhook reads a whole body (up to
// MaxBody, 4 MiB, into memory, then decodes it twice) before it counts the
// admission against MaxInFlight, and its listener takes any number of
// connections, each given readTimeout (a minute) to send its body. Anyone
// who reaches the port (open to every source) holds as many 4 MiB buffers
// as it opens connections: a few hundred exceed the chart's 1 GiB memory
// limit, and the registry, in the same process, goes down with it. The
// bodies being read at once must be bounded (here: by MaxInFlight), a
// request past the bound answered at once without its body. The clock is
// synctest's: a stalled body is a goroutine blocked on a channel.
func TestWebhookBoundsTheBodiesItHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, err := New(Options{
			Repository: func(string, string) (Repository, error) { return nil, errors.New("not read") },
			IsUpstream: func(string) bool { return false },
			RuleSets:   func(context.Context) ([]ruleset.Set, error) { return nil, nil },
			Pins:       noPins{}, Budget: 1, ImageBudget: 1,
			Metrics: Metrics{Images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "images"}, []string{"result"}),
				Seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "seconds"})},
			Log: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		h := w.Handler()
		release := make(chan struct{})
		var stalled, answered atomic.Int64
		const clients = 4 * MaxInFlight
		done := make(chan struct{}, clients)
		for range clients {
			body := &stallingBody{
				prefix:  strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"spec":{"containers":[`),
				release: release, stalled: &stalled,
			}
			go func() {
				defer func() { done <- struct{}{} }()
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", body))
				answered.Add(1)
			}()
		}
		synctest.Wait()
		held, early := stalled.Load(), answered.Load()
		close(release)
		for range clients {
			<-done
		}
		if held > MaxInFlight {
			t.Errorf("%d bodies held in memory at once, from %d clients that send nothing more; want at most %d (%d answered)", held, clients, MaxInFlight, early)
		}
	})
}
