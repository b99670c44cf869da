package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/upstream"
)

// heldBodies is regnorm_upstream_body_memory_bytes for docker.io, and
// whether it is exported at all.
func (h *harness) heldBodies(t testing.TB) (float64, bool) {
	t.Helper()
	r := h.do(t, http.MethodGet, "/metrics", nil)
	m := regexp.MustCompile(`(?m)^regnorm_upstream_body_memory_bytes\{upstream="docker.io"\} (\S+)$`).FindSubmatch(r.body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// TestUpstreamManifestsAreBounded: the manifests read from upstream hold
// at most maxUpstreamBodyMemory together. A hostile upstream sends most of
// a large manifest and then waits: the memory it holds is charged, another
// manifest that does not fit is refused at once (503 with Retry-After,
// never a wait), and when the client of the first goes away its fetch is
// cancelled (after a grace, for a client that retries) and its memory
// given back, so a manifest that fits is served again. With a Content-Length the answer is charged up front; without one
// (chunked), as its buffer grows.
func TestUpstreamManifestsAreBounded(t *testing.T) {
	t.Parallel()
	const announced = 40 << 10
	small := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	for _, tt := range []struct {
		name    string
		chunked bool
		held    float64 // what the held answer is charged
	}{
		{"announced", false, announced},
		{"chunked", true, 64 << 10}, // its buffer, doubled from 16 KiB past 40 KiB
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var holding, ended atomic.Int64
			hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				if strings.HasSuffix(r.URL.Path, digest.FromBytes(small).String()) {
					w.Write(small)
					return
				}
				if !tt.chunked {
					w.Header().Set("Content-Length", strconv.Itoa(announced))
				}
				// All of a manifest but its end, and then nothing.
				io.WriteString(w, `{"schemaVersion":2,"pad":"`+strings.Repeat("x", announced-100))
				w.(http.Flusher).Flush()
				holding.Add(1)
				<-r.Context().Done()
				ended.Add(1)
			}))
			t.Cleanup(hostile.Close)
			clock := newFakeClock()
			h := newHarness(t, harnessOptions{upstreamURL: hostile.URL, bodyMemory: 64 << 10, stall: 10 * time.Minute,
				retry: upstream.RetryPolicy{Attempts: 1}, clock: clock})

			ctx, leave := context.WithCancel(context.Background())
			defer leave()
			first := make(chan error, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/v2/library/app/manifests/"+digest.FromString("first").String(), nil)
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				first <- err
			}()
			waitFor(t, "the first manifest to be held", func() bool {
				held, ok := h.heldBodies(t)
				return ok && held == tt.held && holding.Load() == 1
			})

			r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+digest.FromString("second").String(), containerdAccept)
			if r.status != http.StatusServiceUnavailable || r.ociError(t) != "UNAVAILABLE" || r.header.Get("Retry-After") != "5" {
				t.Errorf("a manifest past the memory bound: got %d %s (Retry-After %q), want 503 UNAVAILABLE with Retry-After",
					r.status, r.body, r.header.Get("Retry-After"))
			}
			if got := h.metric(t, "regnorm_upstream_body_memory_refused_total", `upstream="docker.io"`); got != 1 {
				t.Errorf("refused answers counted %v, want 1", got)
			}

			// The first client goes: nobody waits for its fetch any more.
			// It goes on for a grace, for a client that retries, and then
			// ends.
			if n := clock.Waiting(); n != 0 {
				t.Fatalf("%d timers before the client left, want none", n)
			}
			leave()
			<-first
			waitFor(t, "the abandoned fetch's grace to start", func() bool { return clock.Waiting() == 1 })
			if held, _ := h.heldBodies(t); held != tt.held {
				t.Errorf("within the grace, %v bytes held, want the fetch's %v", held, tt.held)
			}
			clock.Advance(time.Minute)
			waitFor(t, "the abandoned fetch to give its memory back", func() bool {
				held, _ := h.heldBodies(t)
				return held == 0 && ended.Load() == holding.Load()
			})
			if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+digest.FromBytes(small).String(), containerdAccept); r.status != http.StatusOK {
				t.Errorf("a manifest that fits, after: got %d %s", r.status, r.body)
			}
		})
	}
}
