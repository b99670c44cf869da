package proxy_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
)

// motdLayer is a layer no rule changes.
var motdLayer = []regtest.File{{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "etc/motd", Content: []byte("regnorm\n")}}

// TestMadeBlobEqualToAnotherRepositorysUpstreamBlob: the config regnorm
// makes for a/app:wrong (its diff IDs mended) is byte for byte the config
// b/app holds upstream (same layers' tars, zstd there). Pulled after it, as
// containerd would (the manifest by tag, then the config and the layers by
// digest), b/app gets every object: the blob b/app holds upstream is not
// refused because regnorm also made it from a/app's config. A repository
// that holds neither still gets nothing. (The e2e images paketo/app:wrong
// and buildkit/app:v1, pulled through one regnorm, met this.)
func TestMadeBlobEqualToAnotherRepositorysUpstreamBlob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	good := h.push(t, "a/app", "good", regtest.ImageOptions{}, baseLayer, motdLayer)
	var goodCfg ocispec.Image
	var goodManifest ocispec.Manifest
	json.Unmarshal(good.Config, &goodCfg)
	json.Unmarshal(good.Manifest, &goodManifest)

	// a/app:wrong: its second diff ID is the compressed layer's digest.
	wrongCfg := goodCfg
	wrongCfg.RootFS.DiffIDs = []digest.Digest{goodCfg.RootFS.DiffIDs[0], goodManifest.Layers[1].Digest}
	rawCfg, _ := json.Marshal(wrongCfg)
	wrong := goodManifest
	wrong.Config.Digest, wrong.Config.Size = h.pushBlob(t, "a/app", rawCfg), int64(len(rawCfg))
	raw, _ := json.Marshal(wrong)
	if err := h.reg.Client().PushManifest(context.Background(), "a/app", "wrong", wrong.MediaType, raw); err != nil {
		t.Fatal(err)
	}
	b := h.push(t, "b/app", "v1", regtest.ImageOptions{LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.zstd"}, baseLayer, motdLayer)
	bCfg := digest.FromBytes(b.Config)

	pull := func(repo, tag, version string) ocispec.Manifest {
		t.Helper()
		got := headDigest(t, h, "/v2/"+repo+"/manifests/"+tag, containerdHeader(version))
		r := h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+got.String(), containerdHeader(version))
		var m ocispec.Manifest
		if err := json.Unmarshal(r.body, &m); r.status != http.StatusOK || err != nil {
			t.Fatalf("%s:%s as %s, manifest %s: %d %s", repo, tag, version, got, r.status, r.body)
		}
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+d.Digest.String(), containerdHeader(version))
			if r.status != http.StatusOK || digest.FromBytes(r.body) != d.Digest {
				t.Errorf("%s:%s as %s, blob %s: %d %s", repo, tag, version, d.Digest, r.status, r.body)
			}
		}
		return m
	}
	if m := pull("a/app", "wrong", "1.6.20"); m.Config.Digest != bCfg {
		t.Fatalf("a/app:wrong's mended config is %s, not b/app's %s: the test's premise broke", m.Config.Digest, bCfg)
	}
	if m := pull("b/app", "v1", "1.4.13"); m.Config.Digest != bCfg {
		t.Fatalf("b/app's variant for 1.4.13 has config %s, want its own %s", m.Config.Digest, bCfg)
	}
	if r := h.do(t, http.MethodGet, "/v2/c/other/blobs/"+bCfg.String(), nil); r.status == http.StatusOK {
		t.Error("the config was served under a repository that holds neither it nor its source")
	}
}

// TestMadeLayerEqualToAnotherRepositorysUpstreamLayer: c/app holds
// upstream, byte for byte, the variant regnorm made of b/app for
// containerd 1.4 (its zstd layers gzipped): the manifest and the layers
// regnorm made from b/app's are c/app's own. c/app's client gets them,
// and once they are evicted, gets the layers again from the upstream, not
// rebuilt from b/app's zstd layers, which c/app does not hold. The
// manifest's referrers in c/app are its upstream's.
func TestMadeLayerEqualToAnotherRepositorysUpstreamLayer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	b := h.push(t, "b/app", "v1", regtest.ImageOptions{LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.zstd"}, baseLayer, motdLayer)
	made := headDigest(t, h, "/v2/b/app/manifests/v1", containerdHeader("1.4.13"))
	raw := h.do(t, http.MethodGet, "/v2/b/app/manifests/"+made.String(), containerdHeader("1.4.13")).body
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil || digest.FromBytes(raw) != made || len(m.Layers) != 2 || m.Layers[0].Digest == digest.FromBytes(b.Layers[0]) {
		t.Fatalf("b/app's variant for 1.4.13 (%v): %s", err, raw)
	}
	h.pushBlob(t, "c/app", b.Config)
	for _, l := range m.Layers {
		h.pushBlob(t, "c/app", h.do(t, http.MethodGet, "/v2/b/app/blobs/"+l.Digest.String(), nil).body)
	}
	if err := h.reg.Client().PushManifest(context.Background(), "c/app", "v1", m.MediaType, raw); err != nil {
		t.Fatal(err)
	}
	// c/app's image is signed there: its referrers are the upstream's, not
	// the (none) regnorm made for b/app's variant.
	sig := h.pushReferrer(t, "c/app", ocispec.Descriptor{MediaType: m.MediaType, Digest: made, Size: int64(len(raw))}, sigType, "signature")
	withReferrersAPI(t, h, map[string][]referrer{"/v2/c/app/referrers/" + made.String(): {sig}})

	pull := func() {
		t.Helper()
		if got := headDigest(t, h, "/v2/c/app/manifests/v1", containerdHeader("1.6.20")); got != made {
			t.Fatalf("c/app:v1 is %s, want %s", got, made)
		}
		if r := h.do(t, http.MethodGet, "/v2/c/app/manifests/"+made.String(), containerdHeader("1.6.20")); r.status != http.StatusOK {
			t.Errorf("c/app's manifest: %d %s", r.status, r.body)
		}
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			r := h.do(t, http.MethodGet, "/v2/c/app/blobs/"+d.Digest.String(), containerdHeader("1.6.20"))
			if r.status != http.StatusOK || digest.FromBytes(r.body) != d.Digest {
				t.Errorf("c/app's blob %s: %d %s", d.Digest, r.status, r.body)
			}
		}
	}
	pull()
	r, idx := h.getReferrers(t, "c/app", made, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("c/app's referrers of its image: %d %s", r.status, r.body)
	}
	wantListed(t, idx, sig)
	if r, idx := h.getReferrers(t, "b/app", made, "", nil); r.status != http.StatusOK || len(idx.Manifests) != 0 {
		t.Errorf("b/app's referrers of its variant: %d %s", r.status, r.body)
	}
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := h.metric(t, "regnorm_layer_rebuilds_total", "")
	for _, l := range m.Layers {
		if r := h.do(t, http.MethodHead, "/v2/c/app/blobs/"+l.Digest.String(), containerdHeader("1.6.20")); r.status != http.StatusOK ||
			r.header.Get("Content-Length") != strconv.FormatInt(l.Size, 10) {
			t.Errorf("HEAD of c/app's evicted layer %s: %d, Content-Length %s", l.Digest, r.status, r.header.Get("Content-Length"))
		}
	}
	pull()
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != before {
		t.Errorf("c/app's layers were rebuilt (%v rebuilds), not downloaded from c/app", n-before)
	}
	if r := h.do(t, http.MethodGet, "/v2/c/other/blobs/"+m.Layers[1].Digest.String(), nil); r.status == http.StatusOK {
		t.Error("a made layer was served under a repository that holds neither it nor its source")
	}
}
