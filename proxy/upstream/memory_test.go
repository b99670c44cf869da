package upstream_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// holdingUpstream answers every manifest GET with most of a manifest of
// size bytes and then waits for release; it counts the answers it holds.
func holdingUpstream(t *testing.T, size int, release <-chan struct{}) (string, *atomic.Int64) {
	var held atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		io.WriteString(w, `{"schemaVersion":2,"pad":"`+strings.Repeat("x", size-100))
		w.(http.Flusher).Flush()
		held.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &held
}

// TestEachUpstreamHasAShareOfTheMemory: upstreams share one bound on the
// answers they hold, and one may hold at most its share of it (three
// quarters, with two upstreams): an upstream that holds its share is
// refused more at once, with a 503 and Retry-After, and the other upstream
// still has room.
func TestEachUpstreamHasAShareOfTheMemory(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slowURL, held := holdingUpstream(t, 40<<10, release)
	t.Cleanup(func() { close(release) }) // before the server closes
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		io.WriteString(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"pad":"`+strings.Repeat("y", 10<<10)+`"}`)
	}))
	t.Cleanup(fast.Close)
	memory := upstream.NewBodyMemory(64<<10, 2) // a share of 48 KiB each
	metrics := upstream.NewMetrics()
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(metrics.Collectors()...)
	newReg := func(name, base string) *upstream.Registry {
		u, _ := url.Parse(base)
		return upstream.New(upstream.Config{Name: name, URL: u}, upstream.Options{
			Retry: upstream.RetryPolicy{Attempts: 1}, Stall: time.Minute, Metrics: metrics, Memory: memory, Log: slog.New(slog.DiscardHandler)})
	}
	slow, other := newReg("slow", slowURL).Repository("app"), newReg("other", fast.URL).Repository("app")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := slow.GetManifest(ctx, "first", nil, "")
		done <- err
	}()
	for deadline := time.Now().Add(time.Minute); held.Load() != 1 || heldBy(t, promReg, "slow") != 40<<10; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the first manifest was not held within a minute: %d held, %.0f bytes charged", held.Load(), heldBy(t, promReg, "slow"))
		}
	}
	_, err := slow.GetManifest(ctx, "second", nil, "")
	var e *errcode.Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.RetryAfter == 0 || !errors.Is(err, upstream.ErrBodyMemorySpent) {
		t.Errorf("a second answer past the upstream's share: got %v, want 503 with Retry-After", err)
	}
	if m, err := other.GetManifest(ctx, "v1", nil, ""); err != nil || len(m.Content) < 10<<10 {
		t.Errorf("the other upstream, within the whole: got %v", err)
	}
	cancel()
	<-done
	if got := heldBy(t, promReg, "slow") + heldBy(t, promReg, "other"); got != 0 {
		t.Errorf("%v bytes still held once the reads are over", got)
	}
}

// heldBy is regnorm_upstream_body_memory_bytes of upstream.
func heldBy(t *testing.T, g prometheus.Gatherer, upstream string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "regnorm_upstream_body_memory_bytes" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "upstream" && l.GetValue() == upstream {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("regnorm_upstream_body_memory_bytes{upstream=%q} is not exported", upstream)
	return 0
}

// TestTokenAnswersAreCapped: a token service's answer is read within 64
// KiB (a token goes in a header servers cap at 8 to 16 KiB): a larger one
// is a failed token service, never held.
func TestTokenAnswersAreCapped(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		pad  int
		ok   bool
	}{{"ordinary", 2 << 10, true}, {"large", 100 << 10, false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var realm string
			mux := http.NewServeMux()
			mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"token":"t","expires_in":300,"pad":"`+strings.Repeat("p", tt.pad)+`"}`)
			})
			mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Authorization") != "Bearer t" {
					w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="example"`)
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				io.WriteString(w, "{}")
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			realm = srv.URL + "/token"
			resp, err := get(t, registryAt(srv.URL, upstream.Config{}), "a/b")
			if tt.ok {
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("got %v %v", resp, err)
				}
				upstream.Drain(resp)
				return
			}
			if err == nil || errcode.StatusOf(err) != http.StatusBadGateway {
				t.Errorf("a 100 KiB token answer: got %v, want a failed token service", err)
			}
		})
	}
}
