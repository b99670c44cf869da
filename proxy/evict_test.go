package proxy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// pullAll fetches an image like containerd (tag, manifest, config, layers)
// and checks every digest.
func (h *harness) pullAll(t *testing.T, repo, tag string) {
	t.Helper()
	_, body := h.pullByTag(t, repo, tag)
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	for _, desc := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+desc.Digest.String(), nil)
		if r.status != http.StatusOK || r.err != nil || digest.FromBytes(r.body) != desc.Digest {
			t.Fatalf("%s:%s blob %s: %d %v", repo, tag, desc.Digest, r.status, r.err)
		}
	}
}

func (h *harness) waitWithin(t *testing.T, limit int64) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, err := h.store.Usage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if u.Bytes <= limit {
			return u.Bytes
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cache holds %d bytes, over its %d limit", u.Bytes, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBoundedCache: a cache limited to 4 MiB serves a workload three times
// larger, stays within the limit, and every response stays correct.
func TestBoundedCache(t *testing.T) {
	t.Parallel()
	const limit = 4 << 20
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, eviction: cache.EvictionPolicy{MaxBytes: limit}})
	for i := range 12 {
		h.push(t, "library/app", fmt.Sprint("v", i), regtest.ImageOptions{}, []regtest.File{{Name: "blob", Content: regtest.RandomBytes(1 << 20)}})
	}
	for i := range 12 {
		h.pullAll(t, "library/app", fmt.Sprint("v", i))
		h.waitWithin(t, limit)
	}
	if n := h.metric(t, "regnorm_cache_evictions_total", ""); n < 8 {
		t.Fatalf("evictions = %v", n)
	}
	// The first images were evicted: they are fetched again, correctly.
	before := h.reg.Requests(http.MethodGet, "blobs")
	h.pullAll(t, "library/app", "v0")
	if h.reg.Requests(http.MethodGet, "blobs") == before {
		t.Fatal("an evicted layer was served without fetching it again")
	}
	h.waitWithin(t, limit)
}

// TestEvictedRepackagedLayerIsRebuilt: a repackaged layer, which upstream
// does not have, is rebuilt from its original after eviction, byte for
// byte; the rewritten config is never evicted.
func TestEvictedRepackagedLayerIsRebuilt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	_, body := h.pullByTag(t, "ansible/creator-ee", "v0.5.0")
	var m ocispec.Manifest
	json.Unmarshal(body, &m)

	res, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now())
	if err != nil || res.Remaining.Blobs != 1 {
		t.Fatalf("evict all but the rewritten config: %+v %v", res, err)
	}
	// A HEAD finds it too: upstream never had it, so it is rebuilt first.
	head := h.do(t, http.MethodHead, "/v2/ansible/creator-ee/blobs/"+m.Layers[1].Digest.String(), nil)
	if head.status != http.StatusOK || head.header.Get("Content-Length") != fmt.Sprint(m.Layers[1].Size) {
		t.Fatalf("HEAD of the evicted repackaged layer: %d, Content-Length %q", head.status, head.header.Get("Content-Length"))
	}
	h.pullAll(t, "ansible/creator-ee", "v0.5.0")
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 1 {
		t.Fatalf("rebuilds = %v, want 1", n)
	}
}

// countedWalks is a cache driver that counts the walks of /blobs: each is
// a listing of the whole cache (dear on S3).
type countedWalks struct {
	storagedriver.StorageDriver
	walks atomic.Int64
}

func (d *countedWalks) Walk(ctx context.Context, path string, f storagedriver.WalkFn, options ...func(*storagedriver.WalkOptions)) error {
	if strings.HasPrefix(path, "/blobs") {
		d.walks.Add(1)
	}
	return d.StorageDriver.Walk(ctx, path, f, options...)
}

func (d *countedWalks) List(ctx context.Context, path string) ([]string, error) {
	if strings.HasPrefix(path, "/blobs") {
		d.walks.Add(1)
	}
	return d.StorageDriver.List(ctx, path)
}

// TestEvictionDoesNotFollowEveryDownload: when nothing can be evicted
// (every blob within its grace), the cache stays over its limit; downloads
// then wake the evictor only once a tenth of the limit (at least 16 MiB)
// more has come, not each one.
func TestEvictionDoesNotFollowEveryDownload(t *testing.T) {
	t.Parallel()
	d := &countedWalks{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 50})}
	h := newHarness(t, harnessOptions{clock: newFakeClock(), tagTTL: time.Hour, store: cache.New(d),
		eviction: cache.EvictionPolicy{MaxBytes: 1, Grace: time.Hour}})
	waitFor(t, "the first maintenance pass", func() bool { return d.walks.Load() > 0 })
	for i := range 10 {
		h.push(t, "library/app", fmt.Sprint("v", i), regtest.ImageOptions{}, []regtest.File{{Name: "f", Content: regtest.RandomBytes(64 << 10)}})
		h.pullAll(t, "library/app", fmt.Sprint("v", i))
	}
	// 20 small blobs later, one big one wakes the evictor: one more pass.
	first := d.walks.Load()
	big := regtest.RandomBytes(17 << 20)
	dgst := h.pushBlob(t, "library/app", big)
	if r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+dgst.String(), nil); r.status != http.StatusOK {
		t.Fatalf("big blob: %d", r.status)
	}
	waitFor(t, "a pass after 16 MiB more", func() bool { return d.walks.Load() > first })
	if got := d.walks.Load() - first; got != 1 || first > 2 {
		t.Fatalf("walks of /blobs: %d at the start and after 20 small downloads, %d after the big one; want 1 or 2, then 1", first, got)
	}
}

// TestScanOfEvictedRepackagedLayerTakesOneTurn: an image may list a layer
// regnorm made (here another tag of the same repository lists the
// repackaged layer of the first). When that layer was evicted, its scan
// rebuilds it first, and only then takes its turn: with one turn of layer
// work, a scan that took its turn and then rebuilt the layer (which takes
// a turn too) would wait on itself, and the pull would hang.
func TestScanOfEvictedRepackagedLayerTakesOneTurn(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clock: newFakeClock(), layerWork: normalize.WorkLimits{Running: 1}})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, xattrLayer)
	_, body := h.pullByTag(t, "library/app", "v1")
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	repacked := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+m.Layers[0].Digest.String(), nil)
	if repacked.status != http.StatusOK || digest.FromBytes(repacked.body) != m.Layers[0].Digest {
		t.Fatalf("repackaged layer: %d", repacked.status)
	}
	listing := pushRawImage(t, h, "library/app", "v2", repacked.body)
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}

	done := make(chan response, 1)
	go func() { done <- h.do(t, http.MethodGet, "/v2/library/app/manifests/v2", containerdHeader("1.6.8")) }()
	var r response
	waitFor(t, "the image that lists the evicted layer to be answered", func() bool {
		select {
		case r = <-done:
			return true
		default:
		}
		if h.metric(t, "regnorm_layer_work_queued", "") > 0 {
			t.Fatal("layer work waits for a turn while the only turn is held: a scan waits on its own rebuild")
		}
		return false
	})
	if r.status != http.StatusOK || !bytes.Equal(r.body, listing) {
		t.Fatalf("got %d %.200s, want the image as it is (its layer is clean)", r.status, r.body)
	}
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 1 {
		t.Errorf("rebuilds = %v, want 1", n)
	}
}

// TestEvictedExpandedLayerIsRebuilt: a layer repackaged for the GNU sparse
// rule (made when a rule set first asked, recorded as the "expand"
// transform) is rebuilt from its original after eviction, byte for byte.
// The rule is opt-in: turned on here.
func TestEvictedExpandedLayerIsRebuilt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{rules: &ruleset.Policy{Enabled: ruleset.All(), Unknown: ruleset.All()}})
	sparse := []regtest.File{{Name: "var/big", Typeflag: tar.TypeGNUSparse, SparseSize: 1 << 20,
		Sparse: []regtest.SparseData{{Offset: 700000, Data: []byte("X")}}}}
	img := h.push(t, "gnu/sparse", "v1", regtest.ImageOptions{}, baseLayer, sparse)
	dgst, body := h.pullByTag(t, "gnu/sparse", "v1")
	if dgst == img.ManifestDigest {
		t.Fatal("served the original")
	}
	var m ocispec.Manifest
	json.Unmarshal(body, &m)

	res, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now())
	if err != nil || res.Remaining.Blobs != 1 {
		t.Fatalf("evict all but the rewritten config: %+v %v", res, err)
	}
	head := h.do(t, http.MethodHead, "/v2/gnu/sparse/blobs/"+m.Layers[1].Digest.String(), nil)
	if head.status != http.StatusOK || head.header.Get("Content-Length") != fmt.Sprint(m.Layers[1].Size) {
		t.Fatalf("HEAD of the evicted expanded layer: %d, Content-Length %q", head.status, head.header.Get("Content-Length"))
	}
	h.pullAll(t, "gnu/sparse", "v1")
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 1 {
		t.Fatalf("rebuilds = %v, want 1", n)
	}
}
