package proxy_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// trickleBlob makes the upstream send blob dgst one byte at a time (never
// silent long enough for the stall guard) until release is closed, then
// stop short. started is closed at its first request.
func trickleBlob(h *harness, dgst digest.Digest, content []byte) (started <-chan struct{}, release func()) {
	begun, stop := make(chan struct{}), make(chan struct{})
	var beginOnce, stopOnce sync.Once
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
			h.front.relay(w, r)
			return
		}
		beginOnce.Do(func() { close(begun) })
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", dgst.String())
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
		for i := 0; i < len(content)-1; i++ {
			select {
			case <-stop:
				return
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			w.Write(content[i : i+1])
			w.(http.Flusher).Flush()
		}
		<-stop
	})
	return begun, func() { stopOnce.Do(func() { close(stop) }) }
}

// TestPremadeStopsWithItsContext: the pre-made variants' work stops when
// the server's context ends (docs/behavior.md: "on the server's context,
// not the request's: it stops when regnorm does"), whatever the upstream
// does. Here a hostile (or just slow) upstream trickles the layer the 1.6.8
// variant needs, a byte at a time, never silent long enough for the stall
// guard. RunPremade must return once its context ends: cmd/proxy's
// errgroup waits for it, so a worker that does not stop holds the whole
// process past shutdownTimeout. Fails today: Variant(wait 0) joins the
// engine's single-flight normalization, which runs on
// context.WithoutCancel(ctx) for up to the engine's timeout (1 h), and
// singleflight.Do does not return before it; premade's own 30-minute
// timeout per variant is just as powerless.
func TestPremadeStopsWithItsContext(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{premadeQueue: 8, premadeByTest: true, tagTTL: time.Hour})
	h.reportFleet(t, map[string]string{"old-node": "1.6.8", "new-node": "2.3.4"})
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	layer := img.Layers[1]
	started, release := trickleBlob(h, digest.FromBytes(layer), layer)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.srv.RunPremade(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Runs first: whatever the verdict, the trickle ends with the test.
	t.Cleanup(release)

	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", nodeHeader("2.3.4", "new-node")); got != img.ManifestDigest {
		t.Fatalf("containerd 2.3.4 got %s, want the original %s", got, img.ManifestDigest)
	}
	<-started // the 1.6.8 variant's work is downloading the layer
	cancel()
	waitFor(t, "RunPremade to return once its context ended (the upstream still trickling)", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}
