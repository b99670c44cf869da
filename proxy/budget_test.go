package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/proxy"
)

// wideIndex is an OCI index of n linux/amd64 children (each an image
// manifest with no layers, so normalizing one needs no further read) and
// the children's bytes by digest.
func wideIndex(t *testing.T, n int) ([]byte, map[digest.Digest][]byte) {
	t.Helper()
	return wideIndexOf(t, n, "")
}

// wideIndexOf is wideIndex, its children told apart from another index's
// by salt.
func wideIndexOf(t *testing.T, n int, salt string) ([]byte, map[digest.Digest][]byte) {
	t.Helper()
	children := map[digest.Digest][]byte{}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	index.SchemaVersion = 2
	for i := range n {
		child := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[]}`,
			ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, digest.FromString(salt+fmt.Sprint(i))))
		dgst := digest.FromBytes(child)
		children[dgst] = child
		index.Manifests = append(index.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: dgst,
			Size: int64(len(child)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}})
	}
	raw, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	return raw, children
}

// serveIndex makes h's upstream answer the tag v1 with index and its
// children from have (nil: none of them), counting the requests for
// children.
func serveIndex(h *harness, index []byte, have map[digest.Digest][]byte) *atomic.Int64 {
	var childReads atomic.Int64
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		_, ref, ok := strings.Cut(r.URL.Path, "/manifests/")
		switch {
		case !ok:
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		case ref == "v1" || ref == digest.FromBytes(index).String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(index).String())
			w.Write(index)
		default:
			childReads.Add(1)
			child, ok := have[digest.Digest(ref)]
			if !ok {
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write(child)
		}
	})
	return &childReads
}

// TestIndexChildReadsStopAtTheFirstFailure: an index listing 1000 children
// that upstream does not have costs a few child reads (four at a time, and
// none after the first 404), not one per child, before the client gets its
// 404.
func TestIndexChildReadsStopAtTheFirstFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	index, _ := wideIndex(t, 1000)
	childReads := serveIndex(h, index, nil)

	r := h.do(t, http.MethodGet, "/v2/library/wide/manifests/v1", containerdAccept)
	if r.status != http.StatusNotFound || r.ociError(t) != "MANIFEST_UNKNOWN" {
		t.Fatalf("got %d %s, want 404 MANIFEST_UNKNOWN", r.status, r.body)
	}
	if n := childReads.Load(); n < 1 || n > 8 {
		t.Fatalf("%d child reads upstream for one request, want at most 8", n)
	}
}

// TestUpstreamRequestBudget: one request causes at most UpstreamBudget
// upstream requests; past it the client gets a clear 503, and what was
// fetched is kept, so the next request goes on from there.
func TestUpstreamRequestBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const children = 1000 // rewrite.MaxIndexChildren, beyond the budget
	if children <= proxy.UpstreamBudget {
		t.Fatalf("the budget (%d) is not below %d children: the test needs a wider index", proxy.UpstreamBudget, children)
	}
	index, have := wideIndex(t, children)
	childReads := serveIndex(h, index, have)

	r := h.do(t, http.MethodGet, "/v2/library/wide/manifests/v1", containerdAccept)
	if r.status != http.StatusServiceUnavailable || r.ociError(t) != "UNAVAILABLE" || !strings.Contains(string(r.body), "upstream requests") {
		t.Fatalf("got %d %s, want 503 UNAVAILABLE naming the upstream request budget", r.status, r.body)
	}
	first := childReads.Load()
	if first > proxy.UpstreamBudget || first < proxy.UpstreamBudget/2 {
		t.Fatalf("%d child reads for one request, want at most the budget (%d), and most of it", first, proxy.UpstreamBudget)
	}

	r = h.do(t, http.MethodGet, "/v2/library/wide/manifests/v1", containerdAccept)
	if r.status != http.StatusOK {
		t.Fatalf("second pull: %d %s, want 200", r.status, r.body)
	}
	if n := childReads.Load(); n != children {
		t.Fatalf("%d child reads in all, want each of the %d children once", n, children)
	}
}

// TestWarmHasOneBudget: one warm request causes at most WarmBudget upstream
// requests, all its images together, each at most what a pull may. Eight
// images, each an index of 400 children (401 upstream requests each, 3208
// in all): the first are warmed, the rest get an error naming the budget;
// the same warm again goes on from what was fetched.
func TestWarmHasOneBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const images, children = 8, 400
	if children >= proxy.UpstreamBudget || images*(children+1) <= proxy.WarmBudget {
		t.Fatalf("the test needs images within a pull's budget (%d) and more than the warm's (%d) together", proxy.UpstreamBudget, proxy.WarmBudget)
	}
	indexes := map[string][]byte{}
	all := map[digest.Digest][]byte{}
	var names []string
	for i := range images {
		repo := fmt.Sprintf("library/wide%d", i)
		index, have := wideIndexOf(t, children, repo)
		indexes[repo] = index
		maps.Copy(all, have)
		names = append(names, repo+":v1")
	}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		repo, ref, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/")
		if index := indexes[repo]; ok && (ref == "v1" || ref == digest.FromBytes(index).String()) {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(index).String())
			w.Write(index)
			return
		}
		child, found := all[digest.Digest(ref)]
		if !ok || !found {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Write(child)
	})

	before := h.front.count()
	res, err := proxy.Client{Server: h.url}.Warm(context.Background(), names, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := h.front.count() - before; n > proxy.WarmBudget {
		t.Errorf("one warm sent %d upstream requests, more than its budget of %d", n, proxy.WarmBudget)
	}
	warmed, refused := 0, 0
	for _, r := range res {
		switch {
		case r.Error == "":
			warmed++
		case strings.Contains(r.Error, "upstream requests"):
			refused++
		default:
			t.Errorf("%s: %s, want it warmed or refused for the budget", r.Image, r.Error)
		}
	}
	if warmed == 0 || refused == 0 {
		t.Fatalf("%d images warmed, %d refused for the budget; want some of each", warmed, refused)
	}

	res, err = proxy.Client{Server: h.url}.Warm(context.Background(), names, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Error != "" {
			t.Errorf("the same warm again, %s: %s", r.Image, r.Error)
		}
	}
}
