package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/rewrite"
)

// TestZstdToGzipForContainerd14: containerd 1.4 reads zstd layers as plain
// tar. It gets them gzipped: a clean layer byte for byte (its diff ID
// stays), one the symlink rule changes repackaged and gzipped in one pass;
// evicted, each is rebuilt. 1.5 and later keep the zstd layers.
func TestZstdToGzipForContainerd14(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "zstd/app", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, baseLayer, xattrLayer)
	var orig ocispec.Manifest
	json.Unmarshal(img.Manifest, &orig)
	var origCfg ocispec.Image
	json.Unmarshal(img.Config, &origCfg)

	got := headDigest(t, h, "/v2/zstd/app/manifests/v1", containerdHeader("1.4.13"))
	m := variantOf(t, h, "zstd/app", "1.4.13")
	cfgBody := h.do(t, http.MethodGet, "/v2/zstd/app/blobs/"+m.Config.Digest.String(), nil).body
	var cfg ocispec.Image
	json.Unmarshal(cfgBody, &cfg)
	if len(m.Layers) != 2 || len(cfg.RootFS.DiffIDs) != 2 {
		t.Fatalf("variant %+v, config %s", m, cfgBody)
	}
	for i, l := range m.Layers {
		blob := h.do(t, http.MethodGet, "/v2/zstd/app/blobs/"+l.Digest.String(), nil).body
		if l.MediaType != ocispec.MediaTypeImageLayerGzip || !bytes.HasPrefix(blob, []byte{0x1f, 0x8b}) || digest.FromBytes(blob) != l.Digest {
			t.Errorf("layer %d: %s, % x", i, l.MediaType, blob[:min(4, len(blob))])
		}
	}
	if cfg.RootFS.DiffIDs[0] != origCfg.RootFS.DiffIDs[0] {
		t.Error("the clean layer's diff ID changed: its tar was not kept byte for byte")
	}
	if cfg.RootFS.DiffIDs[1] == origCfg.RootFS.DiffIDs[1] {
		t.Error("the xattr layer's diff ID stayed: the symlink rule did not run with the recompression")
	}

	if d := headDigest(t, h, "/v2/zstd/app/manifests/v1", containerdHeader("1.5.0")); d == got {
		t.Error("containerd 1.5.0 got 1.4's gzip variant")
	}

	// Evicted, the gzipped layers are rebuilt, byte for byte.
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		r := h.do(t, http.MethodGet, "/v2/zstd/app/blobs/"+l.Digest.String(), nil)
		if r.status != http.StatusOK || digest.FromBytes(r.body) != l.Digest {
			t.Errorf("evicted layer %d: %d", i, r.status)
		}
	}
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 2 {
		t.Errorf("rebuilds = %v, want 2", n)
	}
	if n := h.metric(t, "regnorm_rewrites_total", `kind="zstd-gzip"`); n != 2 {
		t.Errorf("zstd-gzip rewrites = %v, want 2 (one recompressed layer, one retyped with the symlink fix)", n)
	}
}

// A client that gets both zstd rules (one that names no containerd
// version) gets Docker's zstd layers gzipped, typed as Docker's gzip: the
// two rules do not both retype a layer.
func TestBothZstdRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "zstd/docker", "v1", regtest.ImageOptions{LayerMediaType: rewrite.MediaTypeDockerLayerZstd}, baseLayer)
	got := headDigest(t, h, "/v2/zstd/docker/manifests/v1", http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"crane"}})
	var m ocispec.Manifest
	json.Unmarshal(h.do(t, http.MethodGet, "/v2/zstd/docker/manifests/"+got.String(), containerdAccept).body, &m)
	if len(m.Layers) != 1 || m.Layers[0].MediaType != rewrite.MediaTypeDockerLayerGzip {
		t.Fatalf("layers %+v", m.Layers)
	}
}

// A zstd layer that expands beyond maxLayerSize is left as it is for
// containerd 1.4, as the symlink rule leaves it: the pull is answered (it
// would fail on the node, as it does straight from the upstream), once,
// and not recompressed again on the next request.
func TestZstdLayerTooLargeIsLeftAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxLayerSize: 4 << 10})
	big := []regtest.File{{Name: "big", Content: bytes.Repeat([]byte("regnorm "), 8<<10)}}
	img := h.push(t, "zstd/big", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, big)
	for range 2 {
		if got := headDigest(t, h, "/v2/zstd/big/manifests/v1", containerdHeader("1.4.13")); got != img.ManifestDigest {
			t.Fatalf("1.4.13 got %s, want the original (its layer is left alone)", got)
		}
	}
	if n := h.metric(t, "regnorm_layers_skipped_total", `reason="too-large"`); n < 1 {
		t.Errorf("layers skipped as too large = %v", n)
	}
	if n := h.metric(t, "regnorm_normalizations_total", `result="clean"`); n != 1 {
		t.Errorf("clean normalizations = %v, want 1 (the verdict is kept)", n)
	}
}

// Two upstream layers that repackage to the same bytes (here a gzip and a
// zstd form of one tar, for containerd 1.4) are both recorded as its
// sources: after eviction each repository gets it rebuilt from the layer
// it holds.
func TestLayerMadeFromTwoSources(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "a/gz", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip}, baseLayer, xattrLayer)
	h.push(t, "b/zs", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, baseLayer, xattrLayer)
	layer := func(repo string) digest.Digest { return variantOf(t, h, repo, "1.4.13").Layers[1].Digest }
	if a, b := layer("a/gz"), layer("b/zs"); a != b {
		t.Fatalf("the two forms did not repackage to one layer (%s, %s): the test premise broke", a, b)
	}
	d := layer("a/gz")
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"a/gz", "b/zs"} {
		if r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), nil); r.status != http.StatusOK || digest.FromBytes(r.body) != d {
			t.Errorf("%s after eviction: %d %s", repo, r.status, r.body[:min(len(r.body), 120)])
		}
		h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now())
	}
}

// With forwarded credentials, once a client's confirmation has expired,
// the layer made from two sources is admitted by asking the upstream about
// the source the repository holds, not about the other repository's.
func TestLayerFromTwoSourcesWithForwardedCredentials(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{forward: true, clock: clk})
	h.push(t, "a/gz", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip}, baseLayer, xattrLayer)
	h.push(t, "b/zs", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, baseLayer, xattrLayer)
	layer := func(repo string) digest.Digest { return variantOf(t, h, repo, "1.4.13").Layers[1].Digest }
	d := layer("a/gz")
	if layer("b/zs") != d {
		t.Fatal("the two forms did not repackage to one layer: the test premise broke")
	}
	clk.Advance(2 * time.Minute) // past the upstream's last yes
	for _, repo := range []string{"b/zs", "a/gz"} {
		if r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), nil); r.status != http.StatusOK {
			t.Errorf("%s after the confirmation expired: %d %s", repo, r.status, r.body)
		}
	}
	if r := h.do(t, http.MethodGet, "/v2/c/other/blobs/"+d.String(), nil); r.status == http.StatusOK {
		t.Error("served under a repository that holds neither source")
	}
}

// variantOf is the manifest repo:v1 is answered with to containerd version.
func variantOf(t *testing.T, h *harness, repo, version string) ocispec.Manifest {
	t.Helper()
	got := headDigest(t, h, "/v2/"+repo+"/manifests/v1", containerdHeader(version))
	var m ocispec.Manifest
	if err := json.Unmarshal(h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+got.String(), containerdAccept).body, &m); err != nil {
		t.Fatalf("%s's variant of %s: %v", version, repo, err)
	}
	return m
}
