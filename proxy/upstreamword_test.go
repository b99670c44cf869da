package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strconv"
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
	h := aliceAndHostile(t, func(w http.ResponseWriter, r *http.Request) {
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

// TestUpstreamsWordBeforeTheCacheHasIt: what a hostile upstream says of a
// blob before anyone cached it must not admit its clients once another
// upstream's client has. Its 200 to a HEAD of an uncached blob (answered
// from the HEAD, without a download, for a blob it says is large), or to a
// GET whose bytes then fail to verify, is its word, not its bytes: neither
// may stand as the repository's link to bytes that alice's pull caches
// from docker.io afterwards.
func TestUpstreamsWordBeforeTheCacheHasIt(t *testing.T) {
	t.Parallel()
	for _, first := range []string{"HEAD", "GET"} {
		t.Run(first, func(t *testing.T) {
			t.Parallel()
			h := aliceAndHostile(t, func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.URL.Path == "/v2/":
				case r.Method == http.MethodHead:
					w.Header().Set("Content-Length", strconv.Itoa(8<<20)) // large: answered from the HEAD
				default:
					w.Header().Set("Content-Length", "7")
					w.Write([]byte("garbage"))
				}
			})
			img := h.push(t, "team/private", "v1", regtest.ImageOptions{}, oneFile)
			layer := digest.FromBytes(img.Layers[0])
			evil := "/v2/evil/x/blobs/" + layer.String() + "?ns=hostile"

			r := h.do(t, first, evil, nil)
			if first == http.MethodHead && r.status != http.StatusOK {
				t.Fatalf("the hostile upstream's HEAD of an uncached blob: %d, want its 200 (the test's premise)", r.status)
			}
			if first == http.MethodGet && r.status == http.StatusOK && digest.FromBytes(r.body) == layer {
				t.Fatal("the hostile upstream's garbage was served as the blob")
			}

			alice := basic("alice", "alice-secret-pw")
			if r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+layer.String(), alice); r.status != http.StatusOK || digest.FromBytes(r.body) != layer {
				t.Fatalf("alice's layer: %d", r.status)
			}
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				if r := h.do(t, method, evil, nil); r.status == http.StatusOK {
					t.Errorf("%s after alice's pull: a client of the upstream that only said yes read alice's private layer (%d bytes)", method, len(r.body))
				}
			}
		})
	}
}

// TestAnotherUpstreamSendsACachedBlobOnce: a blob cached from one upstream
// and asked for through another costs that other upstream one download
// (its proof), then a HEAD in another of its repositories, and nothing
// after a restart (the sent record and the links are in the cache). A
// third upstream proves it again: the record is per upstream.
func TestAnotherUpstreamSendsACachedBlobOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	files := randomLayer(t, 5<<20)
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, files)
	h.push(t, "library/other", "v1", regtest.ImageOptions{}, files) // the same layer
	layer := digest.FromBytes(img.Layers[0])
	front, _ := url.Parse(h.front.URL)
	h.opts.more = []upstream.Config{{Name: "mirror.example", URL: front}, {Name: "third.example", URL: front}}
	h.restart(t)

	get := func(repo, ns string) {
		t.Helper()
		r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+layer.String()+"?ns="+ns, nil)
		if r.status != http.StatusOK || digest.FromBytes(r.body) != layer {
			t.Fatalf("%s on %s: %d", repo, ns, r.status)
		}
	}
	app, other := "/v2/library/app/blobs/"+layer.String(), "/v2/library/other/blobs/"+layer.String()
	check := func(when string, got, want map[string]int) {
		t.Helper()
		for _, k := range []string{"GET " + app, "HEAD " + app, "GET " + other, "HEAD " + other} {
			if got[k] != want[k] {
				t.Errorf("%s: upstream saw %q %d times, want %d", when, k, got[k], want[k])
			}
		}
	}

	seen := countRequests(h)
	get("library/app", "docker.io")
	get("library/app", "mirror.example")
	get("library/other", "mirror.example")
	check("one upstream's download, then another's two repositories", seen(),
		map[string]int{"GET " + app: 2, "HEAD " + app: 1, "HEAD " + other: 1})

	h.restart(t)
	seen = countRequests(h)
	get("library/other", "mirror.example")
	get("library/app", "third.example")
	check("after a restart, a known repository, then a third upstream", seen(),
		map[string]int{"GET " + app: 1, "HEAD " + app: 1})
}

// aliceAndHostile is the harness of a hostile upstream's attacks: docker.io
// (with forwarded credentials, where alice may read team/private and make
// attested variants) and "hostile", an upstream that answers as hostile
// says.
func aliceAndHostile(t *testing.T, hostile http.HandlerFunc) *harness {
	t.Helper()
	srv := httptest.NewServer(hostile)
	t.Cleanup(srv.Close)
	hostileURL, _ := url.Parse(srv.URL)
	return newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private"}},
		}},
		forward: true,
		tagTTL:  time.Hour,
		attest:  &attest.Maker{Version: "v0.test"},
		retry:   upstream.RetryPolicy{Attempts: 1},
		more:    []upstream.Config{{Name: "hostile", URL: hostileURL}},
	})
}
