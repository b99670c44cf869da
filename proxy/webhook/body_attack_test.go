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

// testMetrics are a webhook's metrics, registered nowhere.
func testMetrics() Metrics {
	return Metrics{Images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "images"}, []string{"result"}),
		Seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "seconds"})}
}

// bodiesOnly is a webhook for tests of how it reads bodies: it reads no
// repository, and no image names an upstream.
func bodiesOnly(t *testing.T) *Webhook {
	t.Helper()
	w, err := New(Options{
		Repository: func(string, string) (Repository, error) { return nil, errors.New("not read") },
		IsUpstream: func(string) bool { return false },
		RuleSets:   func(context.Context) ([]ruleset.Set, error) { return nil, nil },
		Pins:       noPins{}, Budget: 1, ImageBudget: 1, Metrics: testMetrics(), Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

type noPins struct{}

func (noPins) Pin(context.Context, digest.Digest) error { return nil }

// stallingBody sends the start of an AdmissionReview, then nothing until
// release is closed: a slow client (or one that sends 4 MiB slowly).
// While it stalls, stalled counts it and held (when set) the bytes it
// sent.
type stallingBody struct {
	prefix  io.Reader
	release <-chan struct{}
	stalled *atomic.Int64
	held    *atomic.Int64
	sent    int64
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if n, err := b.prefix.Read(p); n > 0 || !errors.Is(err, io.EOF) {
		b.sent += int64(n)
		return n, err
	}
	b.stalled.Add(1)
	if b.held != nil {
		b.held.Add(b.sent)
	}
	<-b.release
	b.stalled.Add(-1)
	if b.held != nil {
		b.held.Add(-b.sent)
	}
	return 0, io.EOF
}

// TestWebhookBoundsTheBodiesItHolds: the webhook reads a whole body (up to
// MaxBody, 4 MiB) into memory, then decodes it, and its listener takes any
// number of connections, each given ReadTimeout to send its body. Anyone
// who reaches the port (open to every source) would hold as many 4 MiB
// buffers as it opens connections: a few hundred exceed the chart's 1 GiB
// memory limit, and the registry, in the same process, goes down with it.
// The bytes of the bodies being read at once must be bounded (MaxReading,
// all bodies together, counted as they arrive), a request past the bound
// answered at once without the rest of its body. Here 64 clients each
// send 1 MiB of a review and stall: what the stalled ones sent, and the
// webhook holds, is at most MaxReading. The clock is synctest's: a stalled
// body is a goroutine blocked on a channel.
func TestWebhookBoundsTheBodiesItHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := bodiesOnly(t).Handler()
		release := make(chan struct{})
		var stalled, held, refused atomic.Int64
		const clients, each = 64, 1 << 20
		prefix := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"spec":{"containers":[{"image":"` +
			strings.Repeat("a", each)
		done := make(chan struct{}, clients)
		for range clients {
			body := &stallingBody{prefix: strings.NewReader(prefix), release: release, stalled: &stalled, held: &held}
			go func() {
				defer func() { done <- struct{}{} }()
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", body))
				if rec.Code == http.StatusServiceUnavailable {
					refused.Add(1)
				}
			}()
		}
		synctest.Wait()
		gotStalled, gotHeld, early := stalled.Load(), held.Load(), refused.Load()
		close(release)
		for range clients {
			<-done
		}
		if gotHeld > MaxReading {
			t.Errorf("%d bodies of %d clients that send nothing more hold %d bytes at once; want at most %d (%d answered 503 at once)",
				gotStalled, clients, gotHeld, MaxReading, early)
		}
		if gotStalled == 0 || early == 0 {
			t.Errorf("%d bodies stalled and %d answered 503: the test sent no more than the bound", gotStalled, early)
		}
	})
}
