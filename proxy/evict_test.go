package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
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
