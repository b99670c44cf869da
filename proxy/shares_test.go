package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestStalledUpstreamLeavesSlotsForOthers: with maxDownloads 2, an upstream
// whose blob downloads never get an answer holds at most its share (one)
// of the slots, however many of its downloads are asked for: a download
// from another upstream still starts and finishes. Its waiting downloads
// are bounded by the same share of the queue: beyond, its clients get 503
// and the queue stays open to the others. No timing: the stalled
// upstream's handler blocks until the test lets it go.
func TestStalledUpstreamLeavesSlotsForOthers(t *testing.T) {
	t.Parallel()
	other := regtest.Start(t, regtest.Options{})
	otherURL, _ := url.Parse(other.URL)
	h := newHarness(t, harnessOptions{
		fetches: blobfetch.Limits{Downloads: 2, Queued: 2}, // a share of 1 running, 2 in all
		more:    []upstream.Config{{Name: "quay.io", URL: otherURL}},
	})
	stalled := [][]byte{regtest.RandomBytes(4 << 10), regtest.RandomBytes(4 << 10), regtest.RandomBytes(4 << 10)}
	var stalledPaths []string
	for _, b := range stalled {
		stalledPaths = append(stalledPaths, "/v2/library/slow/blobs/"+h.pushBlob(t, "library/slow", b).String())
	}
	content := regtest.RandomBytes(4 << 10)
	if err := other.Client().PushBlob(context.Background(), "library/fast", content); err != nil {
		t.Fatal(err)
	}

	var entered atomic.Int64
	release := make(chan struct{})
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			entered.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		h.front.relay(w, r)
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(release); wg.Wait() })
	for _, p := range stalledPaths[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.do(t, http.MethodGet, p, nil)
		}()
	}
	// Both stalled downloads are under way: one at the upstream, the
	// other running too or waiting for its turn.
	waitFor(t, "the stalled downloads to start", func() bool {
		return entered.Load() >= 1 &&
			h.metric(t, "regnorm_upstream_inflight_fetches", "")+h.metric(t, "regnorm_upstream_queued_fetches", "") == 2
	})

	done := make(chan response, 1)
	go func() {
		done <- h.do(t, http.MethodGet, "/v2/library/fast/blobs/"+digest.FromBytes(content).String()+"?ns=quay.io", nil)
	}()
	var r response
	waitFor(t, "the other upstream's download to finish, or to be kept waiting", func() bool {
		select {
		case r = <-done:
			return true
		default:
		}
		// Kept waiting: the stalled upstream has both slots and the other
		// upstream's download queues behind them.
		if entered.Load() == 2 && h.metric(t, "regnorm_upstream_queued_fetches", "") == 1 {
			t.Fatal("the stalled upstream holds every download slot: the other upstream's download waits")
		}
		return false
	})
	if r.status != http.StatusOK || !bytes.Equal(r.body, content) {
		t.Fatalf("other upstream's blob: got %d %.200s", r.status, r.body)
	}
	if got := entered.Load(); got != 1 {
		t.Errorf("the stalled upstream got %d blob requests at once, want 1 (its share)", got)
	}
	if got := h.metric(t, "regnorm_upstream_downloads", `state="waiting",upstream="docker.io"`); got != 1 {
		t.Errorf("the stalled upstream's waiting downloads: %v, want 1", got)
	}

	// The stalled upstream has its two; a third is refused, not queued.
	r = h.do(t, http.MethodGet, stalledPaths[2], nil)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "5" || !strings.Contains(string(r.body), "upstream docker.io") {
		t.Errorf("a third download from the stalled upstream: got %d %.200s, want 503 naming it, with Retry-After 5 (as a full layer work queue)", r.status, r.body)
	}
}

// TestStalledUpstreamLeavesLayerWorkForOthers: with two turns of layer
// work, an upstream that never answers blob downloads holds none of them,
// however many of its images are being normalized: a scan takes its turn
// only once its layer is in the cache. Another upstream's image that needs
// its layers scanned (containerd 1.6.8, an xattr on a symlink) is
// normalized meanwhile. (Before, each of the stalled upstream's scans took
// a turn and then waited for its download: two of them held every turn, up
// to the fetch timeout.) No timing: the stalled upstream's handler blocks
// until the test lets it go, and no request reaches its deadline.
func TestStalledUpstreamLeavesLayerWorkForOthers(t *testing.T) {
	t.Parallel()
	other := regtest.Start(t, regtest.Options{})
	otherURL, _ := url.Parse(other.URL)
	h := newHarness(t, harnessOptions{
		clock:     newFakeClock(),
		layerWork: normalize.WorkLimits{Running: 2, Queued: 2},
		more:      []upstream.Config{{Name: "quay.io", URL: otherURL}},
	})
	for i := range 2 {
		h.push(t, fmt.Sprintf("library/stalled%d", i), "v1", regtest.ImageOptions{},
			append(slices.Clone(xattrLayer), regtest.File{Name: fmt.Sprintf("id%d", i), Content: []byte("x")}))
	}
	good, err := regtest.BuildImage(regtest.ImageOptions{}, baseLayer, xattrLayer)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Client().PushImage(context.Background(), "library/good", "v1", good); err != nil {
		t.Fatal(err)
	}

	var entered atomic.Int64
	release := make(chan struct{})
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			entered.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		h.front.relay(w, r)
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(release); wg.Wait() })
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.do(t, http.MethodHead, fmt.Sprintf("/v2/library/stalled%d/manifests/v1", i), containerdHeader("1.6.8"))
		}()
	}
	waitFor(t, "both stalled layer downloads to reach the upstream", func() bool { return entered.Load() == 2 })

	done := make(chan response, 1)
	go func() {
		done <- h.do(t, http.MethodHead, "/v2/library/good/manifests/v1?ns=quay.io", containerdHeader("1.6.8"))
	}()
	var r response
	waitFor(t, "the other upstream's image to be normalized, or to be kept waiting", func() bool {
		select {
		case r = <-done:
			return true
		default:
		}
		if h.metric(t, "regnorm_layer_work_inflight", "") == 2 && h.metric(t, "regnorm_layer_work_queued", "") >= 1 {
			t.Fatal("the stalled upstream's scans hold every turn of layer work: the other upstream's scan waits")
		}
		return false
	})
	if r.status != http.StatusOK || digest.Digest(r.header.Get("Docker-Content-Digest")) == good.ManifestDigest {
		t.Fatalf("the other upstream's image for 1.6.8: %d, %s; want it normalized", r.status, r.header.Get("Docker-Content-Digest"))
	}
	if n := h.metric(t, "regnorm_layer_work_inflight", ""); n != 0 {
		t.Errorf("layer work running while only the stalled downloads are under way: %v, want 0", n)
	}
}
