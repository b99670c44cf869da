package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestUpstreamsYesReadsNoOtherUpstreamsCache: the cache is global by
// digest, and a HEAD's 200 is what admits a client to cached bytes in a
// repository regnorm knows nothing of. An upstream that answers 200 to the
// HEAD of any digest, and holds nothing (every GET is 404), must not let
// its clients read what docker.io's forwarded-credentials clients cached:
// Alice's private image (its manifest, config and layer) and what regnorm
// made of it (the variant, its repackaged layer, the attestation that
// names team/private and what it changed). Anyone may send a
// registry's HEAD a 200; only the bytes prove the upstream holds them.
//
// "every HEAD" is older than the admission of made objects by their own
// HEAD (037d6bb): a plain blob or manifest was admitted by the HEAD of
// itself, a made one by the HEAD of its source, which this upstream says
// yes to as well. "made HEADs only" is that change's own path: the
// upstream says 404 to the original (as an honest one would) and 200 to
// what regnorm made, which no upstream holds but by pushing regnorm's
// bytes; before 037d6bb, the made objects were refused.
func TestUpstreamsYesReadsNoOtherUpstreamsCache(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"every HEAD", "made HEADs only"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testUpstreamsYes(t, mode == "made HEADs only")
		})
	}
}

func testUpstreamsYes(t *testing.T, madeOnly bool) {
	// What the hostile upstream says 404 to even for a HEAD (madeOnly).
	var mu sync.Mutex
	originals := map[string]bool{}
	var heads int
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		ref := path.Base(r.URL.Path)
		mu.Lock()
		known := originals[ref]
		if r.Method == http.MethodHead {
			heads++
		}
		mu.Unlock()
		if r.Method != http.MethodHead || (madeOnly && known) {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", ref)
		}
		w.Header().Set("Content-Length", "1")
	}))
	t.Cleanup(hostile.Close)
	hostileURL, _ := url.Parse(hostile.URL)
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private"}},
		}},
		forward: true,
		tagTTL:  time.Hour,
		attest:  &attest.Maker{Version: "v0.test"},
		retry:   upstream.RetryPolicy{Attempts: 1},
		more:    []upstream.Config{{Name: "hostile", URL: hostileURL}},
	})
	// zstd layers: for containerd 1.4 regnorm makes a variant (a made
	// manifest and a made gzip layer) and its attestation.
	img := h.push(t, "team/private", "v1", regtest.ImageOptions{LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.zstd"}, oneFile)
	alice := basic("alice", "alice-secret-pw")
	for k, v := range containerdHeader("1.4.13") {
		alice[k] = v
	}
	var orig ocispec.Manifest
	if err := json.Unmarshal(img.Manifest, &orig); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, d := range []digest.Digest{img.ManifestDigest, orig.Config.Digest, orig.Layers[0].Digest} {
		originals[d.String()] = true
	}
	mu.Unlock()

	// Alice pulls: all of it is cached.
	r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", alice)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	var vm ocispec.Manifest
	if err := json.Unmarshal(r.body, &vm); r.status != http.StatusOK || err != nil || variant == img.ManifestDigest || len(vm.Layers) != 1 || vm.Layers[0].Digest == orig.Layers[0].Digest {
		t.Fatalf("no variant with a made layer: %d %s", r.status, r.body)
	}
	rr, idx := h.getReferrers(t, "team/private", variant, "", alice)
	if rr.status != http.StatusOK || len(idx.Manifests) != 1 {
		t.Fatalf("the variant's attestation: %d %s", rr.status, rr.body)
	}
	att := idx.Manifests[0].Digest
	r = h.do(t, http.MethodGet, "/v2/team/private/manifests/"+att.String(), alice)
	var am ocispec.Manifest
	if err := json.Unmarshal(r.body, &am); r.status != http.StatusOK || err != nil || len(am.Layers) != 1 {
		t.Fatalf("the attestation: %d %s", r.status, r.body)
	}
	for _, d := range []digest.Digest{orig.Config.Digest, orig.Layers[0].Digest, vm.Layers[0].Digest, am.Config.Digest, am.Layers[0].Digest} {
		if r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+d.String(), alice); r.status != http.StatusOK {
			t.Fatalf("alice's blob %s: %d", d, r.status)
		}
	}
	if r := h.do(t, http.MethodGet, "/v2/team/private/manifests/"+img.ManifestDigest.String(), alice); r.status != http.StatusOK {
		t.Fatalf("alice's original by digest: %d", r.status)
	}

	type read struct{ what, path string }
	made := []read{
		{"the variant", "/v2/evil/x/manifests/" + variant.String()},
		{"the variant's made layer", "/v2/evil/x/blobs/" + vm.Layers[0].Digest.String()},
		{"the attestation", "/v2/evil/x/manifests/" + att.String()},
		{"the attestation's config", "/v2/evil/x/blobs/" + am.Config.Digest.String()},
		{"the attestation's envelope", "/v2/evil/x/blobs/" + am.Layers[0].Digest.String()},
	}
	reads := made
	if !madeOnly {
		reads = append([]read{
			{"alice's private manifest", "/v2/evil/x/manifests/" + img.ManifestDigest.String()},
			{"alice's private config", "/v2/evil/x/blobs/" + orig.Config.Digest.String()},
			{"alice's private layer", "/v2/evil/x/blobs/" + orig.Layers[0].Digest.String()},
		}, made...)
	}
	mu.Lock()
	before := heads
	mu.Unlock()
	for _, rd := range reads {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := h.do(t, method, rd.path+"?ns=hostile", containerdAccept)
			if r.status == http.StatusOK {
				t.Errorf("%s %s: a client of the upstream that said yes read %s from docker.io's clients' cache (%d bytes)",
					method, rd.path, rd.what, len(r.body))
			}
		}
	}
	mu.Lock()
	asked := heads - before
	mu.Unlock()
	if asked == 0 {
		t.Fatal("the hostile upstream was never asked: the test's premise broke")
	}
}
