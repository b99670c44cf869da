package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// upstreamLog records the upstream requests the proxy makes.
type upstreamLog struct {
	mu    sync.Mutex
	blobs []string // digests of blob GETs
}

func (h *harness) logUpstream() *upstreamLog {
	l := &upstreamLog{}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if _, dgst, ok := strings.Cut(r.URL.Path, "/blobs/"); ok && r.Method == http.MethodGet {
			l.mu.Lock()
			l.blobs = append(l.blobs, dgst)
			l.mu.Unlock()
		}
		h.front.relay(w, r)
	})
	return l
}

func (l *upstreamLog) blobGets() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.blobs)
}

func containerdHeader(version string) http.Header {
	return http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"containerd/" + version}}
}

func headDigest(t *testing.T, h *harness, path string, header http.Header) digest.Digest {
	t.Helper()
	r := h.do(t, http.MethodHead, path, header)
	if r.status != http.StatusOK {
		t.Fatalf("HEAD %s as %s: %d %s", path, header.Get("User-Agent"), r.status, r.body)
	}
	return digest.Digest(r.header.Get("Docker-Content-Digest"))
}

// TestVariantsPerClient: each client gets the variant of its rule set. A
// node that unpacks xattrs on symlinks (1.6.9+) gets the original, at once,
// without a layer download; a node that cannot (1.6.8) gets it repackaged;
// the octet-stream fix is for both and reads only the config. The report
// shows each variant and who got it; a pull by the original digest counts
// as unfixed only for a client whose rules change it.
func TestVariantsPerClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	xattr := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	old := h.push(t, "library/redis", "old", legacy, oneFile)
	var oldManifest ocispec.Manifest
	json.Unmarshal(old.Manifest, &oldManifest)
	log := h.logUpstream()

	// containerd 1.6.20 first: no layer of the xattr image is downloaded,
	// only its config (the diff IDs rule's look, which finds them right).
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.20~ds1")); got != xattr.ManifestDigest {
		t.Fatalf("containerd 1.6.20 got %s, want the original %s", got, xattr.ManifestDigest)
	}
	var xattrManifest ocispec.Manifest
	json.Unmarshal(xattr.Manifest, &xattrManifest)
	if got := log.blobGets(); !slices.Equal(got, []string{xattrManifest.Config.Digest.String()}) {
		t.Fatalf("answering a node that needs no layer rule downloaded %v, want only the config", got)
	}
	modernOld := headDigest(t, h, "/v2/library/redis/manifests/old", containerdHeader("2.3.4"))
	if modernOld == old.ManifestDigest {
		t.Fatal("containerd 2.3.4 got the octet-stream image unfixed")
	}
	if got := log.blobGets(); !slices.Equal(got, []string{xattrManifest.Config.Digest.String(), oldManifest.Config.Digest.String()}) {
		t.Fatalf("the config fix downloaded %v, want only the config %s", got, oldManifest.Config.Digest)
	}

	// containerd 1.6.8 gets the xattr image repackaged, and the same
	// octet-stream fix (no layer of it changes).
	fixed := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.8"))
	if fixed == xattr.ManifestDigest {
		t.Fatal("containerd 1.6.8 got the xattr image unfixed")
	}
	if got := headDigest(t, h, "/v2/library/redis/manifests/old", containerdHeader("1.6.8")); got != modernOld {
		t.Fatalf("octet-stream image for 1.6.8: %s, for 2.3.4: %s; the same fix is the same bytes", got, modernOld)
	}
	// And 1.6.20 again: still the original, now listed beside the fix.
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.20")); got != xattr.ManifestDigest {
		t.Fatalf("containerd 1.6.20 got %s after 1.6.8's pull", got)
	}
	// The variant a client gets is byte for byte the upstream's.
	if r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/"+xattr.ManifestDigest.String(), containerdHeader("1.6.20")); string(r.body) != string(xattr.Manifest) {
		t.Fatal("the original served to 1.6.20 differs from the upstream's bytes")
	}
	if n := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); n != 0 {
		t.Fatalf("1.6.20 pulling the original it needs nothing of counted as an unfixed pull: %v", n)
	}
	h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/"+xattr.ManifestDigest.String(), containerdHeader("1.6.8"))
	if n := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); n != 1 {
		t.Fatalf("1.6.8 pulling the original it needs fixed: %v unfixed pulls counted, want 1", n)
	}

	// The original's variant is recorded beside the answer.
	var variants []cache.ReportEntry
	waitFor(t, "the report to list both variants", func() bool {
		variants = nil
		for _, e := range h.report(t) {
			if e.Original == xattr.ManifestDigest {
				variants = append(variants, e)
			}
		}
		return len(variants) == 2
	})
	slices.SortFunc(variants, func(a, b cache.ReportEntry) int { return strings.Compare(a.Normalized.String(), b.Normalized.String()) }) // the original's first
	if len(variants) != 2 {
		t.Fatalf("report of the xattr image: %+v; want two variants", variants)
	}
	if v := variants[0]; v.Rules != ruleset.DiffIDs || v.Normalized != "" || !slices.Equal(v.Clients, []string{"1.6.20"}) || v.TimesServed != 1 || len(v.Changes) != 0 {
		t.Fatalf("the original's variant: %+v", v)
	}
	if v := variants[1]; v.Rules != ruleset.SymlinkXattrs+","+ruleset.DiffIDs || v.Normalized != fixed || !slices.Equal(v.Clients, []string{"1.6.8"}) ||
		len(v.Changes) != 1 || v.Changes[0].Kind != ruleset.SymlinkXattrs || v.UnnormalizedPulls != 1 {
		t.Fatalf("the fixed variant: %+v", v)
	}
	page := string(h.do(t, http.MethodGet, "/status", nil).body)
	for _, want := range []string{fixed.String(), "1.6.8", "1.6.20", "original, unchanged"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}

// TestAllClientsPolicy: normalize.clients: all gives every client every
// enabled rule; an unidentified client gets the configured default.
func TestAllClientsPolicy(t *testing.T) {
	t.Parallel()
	all := ruleset.Policy{Enabled: ruleset.All(), AllClients: true}
	h := newHarness(t, harnessOptions{rules: &all})
	xattr := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("2.3.4")); got == xattr.ManifestDigest {
		t.Fatal("with clients: all, containerd 2.3.4 got the original")
	}

	none := ruleset.Policy{Enabled: ruleset.All(), Unknown: ruleset.Set{}}
	h = newHarness(t, harnessOptions{rules: &none})
	xattr = h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	old := h.push(t, "library/redis", "old", legacy, oneFile)
	crane := http.Header{"User-Agent": {"go-containerregistry/v0.20.2"}}
	if got := headDigest(t, h, "/v2/library/redis/manifests/old", crane); got != old.ManifestDigest {
		t.Fatal("with no rules for unidentified clients, crane got a variant")
	}
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.8")); got == xattr.ManifestDigest {
		t.Fatal("containerd 1.6.8 got the original")
	}
}

// TestWarmVariants: warm for the containerd versions of the fleet makes
// each variant once; the nodes' pulls then cost no work.
func TestWarmVariants(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	xattr := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	results, err := proxy.Client{Server: h.url}.Warm(context.Background(), []string{"ansible/creator-ee:v0.5.0"}, []string{"1.6.8", "1.6.20", "v2.3.4", "1.6.8"})
	if err != nil {
		t.Fatal(err)
	}
	// 1.6.20 and 2.3.4 differ only in a rule that cannot touch this image:
	// one variant, the original.
	if len(results) != 1 || results[0].Error != "" || len(results[0].Variants) != 2 || results[0].NormalizedDigest != "" {
		t.Fatalf("warm: %+v", results)
	}
	old, modern := results[0].Variants[0], results[0].Variants[1]
	if !slices.Equal(old.Clients, []string{"1.6.8"}) || old.Rules != ruleset.SymlinkXattrs+","+ruleset.DiffIDs || old.NormalizedDigest == "" {
		t.Fatalf("1.6.8's variant: %+v", old)
	}
	if !slices.Equal(modern.Clients, []string{"1.6.20", "2.3.4"}) || modern.Rules != ruleset.DiffIDs || modern.NormalizedDigest != "" {
		t.Fatalf("the variant of 1.6.20 and 2.3.4: %+v", modern)
	}
	normalizations := h.metric(t, "regnorm_normalizations_total", "")
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.8")); got.String() != old.NormalizedDigest {
		t.Fatalf("1.6.8 after warm: %s", got)
	}
	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("2.3.4")); got != xattr.ManifestDigest {
		t.Fatalf("2.3.4 after warm: %s", got)
	}
	if h.metric(t, "regnorm_normalizations_total", "") != normalizations {
		t.Fatal("a warmed variant was normalized again on the request")
	}
	r := h.doBody(t, http.MethodPost, "/api/v1/warm", http.Header{"Content-Type": {"application/json"}}, `{"images":["ansible/creator-ee:v0.5.0"],"clients":["latest"]}`)
	if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "not a containerd version") {
		t.Fatalf("warm for a client that is no version: %d %s", r.status, r.body)
	}
}

// TestEveryLayerType: the symlink xattr rule reads every layer type
// containerd unpacks (Docker and OCI; uncompressed, gzip, zstd), keeps the
// layer's type and compression, and leaves foreign and non-distributable
// layers alone, without downloading them.
func TestEveryLayerType(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	magic := map[string][]byte{"gzip": {0x1f, 0x8b}, "zstd": {0x28, 0xb5, 0x2f, 0xfd}}
	for i, mediaType := range []string{
		"application/vnd.docker.image.rootfs.diff.tar",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.diff.tar.zstd",
		"application/vnd.oci.image.layer.v1.tar",
		"application/vnd.oci.image.layer.v1.tar+gzip",
		"application/vnd.oci.image.layer.v1.tar+zstd",
	} {
		repo := fmt.Sprintf("types/t%d", i)
		img := h.push(t, repo, "v1", regtest.ImageOptions{LayerMediaType: mediaType}, baseLayer, xattrLayer)
		fixed := headDigest(t, h, "/v2/"+repo+"/manifests/v1", containerdHeader("1.6.8"))
		if fixed == img.ManifestDigest {
			t.Errorf("%s: served unfixed to containerd 1.6.8", mediaType)
			continue
		}
		var m ocispec.Manifest
		json.Unmarshal(h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+fixed.String(), containerdAccept).body, &m)
		layer := m.Layers[1]
		wantType := mediaType
		if mediaType == rewrite.MediaTypeDockerLayerZstd {
			wantType = ocispec.MediaTypeImageLayerZstd // 1.6.8 needs the zstd media type rule too
		}
		if layer.MediaType != wantType || layer.Digest == digest.FromBytes(img.Layers[1]) {
			t.Errorf("%s: layer descriptor %+v", mediaType, layer)
			continue
		}
		blob := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+layer.Digest.String(), nil).body
		var want []byte
		for suffix, m := range magic {
			if strings.HasSuffix(mediaType, suffix) {
				want = m
			}
		}
		if want != nil && !bytes.HasPrefix(blob, want) || want == nil && (bytes.HasPrefix(blob, magic["gzip"]) || bytes.HasPrefix(blob, magic["zstd"])) {
			t.Errorf("%s: repackaged with another compression: % x", mediaType, blob[:4])
		}
		if got := headDigest(t, h, "/v2/"+repo+"/manifests/v1", containerdHeader("2.3.4")); got != img.ManifestDigest {
			t.Errorf("%s: containerd 2.3.4 got %s, want the original", mediaType, got)
		}
	}

	for i, mediaType := range []string{
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
	} {
		repo := fmt.Sprintf("foreign/t%d", i)
		img := h.push(t, repo, "v1", regtest.ImageOptions{LayerMediaType: mediaType}, xattrLayer)
		log := h.logUpstream()
		if got := headDigest(t, h, "/v2/"+repo+"/manifests/v1", containerdHeader("1.6.8")); got != img.ManifestDigest {
			t.Errorf("%s: changed: %s", mediaType, got)
		}
		var m ocispec.Manifest
		json.Unmarshal(img.Manifest, &m)
		// The config alone, or nothing (both images share it).
		if got := log.blobGets(); slices.ContainsFunc(got, func(d string) bool { return d != m.Config.Digest.String() }) {
			t.Errorf("%s: downloaded %v, want the config alone", mediaType, got)
		}
		h.front.set(nil)
	}
}

// TestReusedVariantIsReported: a variant made for one repository and served
// in another (the verdict is the cache's) is reported there as what it is.
func TestReusedVariantIsReported(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "team/a", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	img := h.push(t, "team/b", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	fixed := headDigest(t, h, "/v2/team/a/manifests/v1", containerdHeader("1.6.8"))
	if got := headDigest(t, h, "/v2/team/b/manifests/v1", containerdHeader("1.6.8")); got != fixed {
		t.Fatalf("team/b got %s, team/a %s", got, fixed)
	}
	found := 0
	for _, e := range h.report(t) {
		if e.Repository != "team/b" {
			continue
		}
		found++
		if e.Original != img.ManifestDigest || e.Normalized != fixed || len(e.Changes) != 1 || e.Rules != ruleset.SymlinkXattrs+","+ruleset.DiffIDs {
			t.Fatalf("team/b's entry: %+v", e)
		}
	}
	if found != 1 {
		t.Fatalf("team/b has %d report entries, want 1", found)
	}
}

// TestUnfixedPullNamesTheDigestToPin: a pull by an original digest is
// reported with the variant to pin instead, also by a process that did not
// make the variant (a restart, another replica).
func TestUnfixedPullNamesTheDigestToPin(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	fixed := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.8"))
	h.restart(t) // the verdict is in the cache; the report's unflushed entries are not
	h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/"+img.ManifestDigest.String(), containerdHeader("1.6.8"))
	entries := h.report(t)
	if len(entries) != 1 || entries[0].UnnormalizedPulls != 1 || entries[0].Normalized != fixed {
		t.Fatalf("report after a pull by the original digest: %+v; want it to name %s", entries, fixed)
	}
	if page := string(h.do(t, http.MethodGet, "/status", nil).body); !strings.Contains(page, fixed.String()) {
		t.Fatal("the status page does not say which digest to pin")
	}
}

// TestZstdMediaTypeVariants: containerd 1.5 – 1.7 cannot unpack Docker's
// zstd layer type; they get a manifest whose zstd layers say OCI zstd,
// answered without reading a blob (the rule reads the manifest only), and
// the layer blobs they then fetch are the upstream's. 2.x gets the original.
func TestZstdMediaTypeVariants(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "buildkit/app", "v1", regtest.ImageOptions{LayerMediaType: rewrite.MediaTypeDockerLayerZstd}, baseLayer, oneFile)

	log := h.logUpstream()
	got := headDigest(t, h, "/v2/buildkit/app/manifests/v1", containerdHeader("1.7.29"))
	if got == img.ManifestDigest {
		t.Fatal("containerd 1.7.29 got the original")
	}
	var orig, fixed ocispec.Manifest
	json.Unmarshal(img.Manifest, &orig)
	if blobs := log.blobGets(); !slices.Equal(blobs, []string{orig.Config.Digest.String()}) {
		t.Errorf("the zstd media type rule downloaded %v before answering, want the config alone (the diff IDs rule's look)", blobs)
	}
	h.front.set(nil)
	json.Unmarshal(h.do(t, http.MethodGet, "/v2/buildkit/app/manifests/"+got.String(), containerdAccept).body, &fixed)
	if fixed.MediaType != orig.MediaType || fixed.Config.Digest != orig.Config.Digest || len(fixed.Layers) != len(orig.Layers) {
		t.Fatalf("variant %+v of %+v", fixed, orig)
	}
	for i, l := range fixed.Layers {
		if l.MediaType != ocispec.MediaTypeImageLayerZstd || l.Digest != orig.Layers[i].Digest || l.Size != orig.Layers[i].Size {
			t.Errorf("layer %d: %+v, was %+v", i, l, orig.Layers[i])
		}
		if r := h.do(t, http.MethodGet, "/v2/buildkit/app/blobs/"+l.Digest.String(), nil); r.status != http.StatusOK || digest.FromBytes(r.body) != l.Digest {
			t.Errorf("layer %d: %d, %d bytes", i, r.status, len(r.body))
		}
	}
	for _, v := range []string{"1.5.0", "1.6.20"} {
		if d := headDigest(t, h, "/v2/buildkit/app/manifests/v1", containerdHeader(v)); d != got {
			t.Errorf("containerd %s got %s, want 1.7.29's %s", v, d, got)
		}
	}
	for _, v := range []string{"2.0.0", "2.3.4"} {
		if d := headDigest(t, h, "/v2/buildkit/app/manifests/v1", containerdHeader(v)); d != img.ManifestDigest {
			t.Errorf("containerd %s got %s, want the original", v, d)
		}
	}
	// Two rule sets made it (1.5.0 gets the layer rule too, which finds
	// nothing here): two layers each.
	if n := h.metric(t, "regnorm_rewrites_total", `kind="zstd-media-type"`); n != 4 {
		t.Errorf("zstd-media-type rewrites = %v, want 4", n)
	}
}
