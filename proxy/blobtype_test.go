package proxy_test

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestManifestThroughBlobs: containerd's resolver asks for a manifest's
// digest through /blobs/ when /manifests/ failed, and keeps the
// Content-Type it gets as the image's type for good (containerd#13007,
// distribution#4812). A manifest the cache holds, the upstream's or a
// variant regnorm made (which upstream never had), is answered there with
// its own media type and bytes, to HEAD and GET; a blob stays
// application/octet-stream.
func TestManifestThroughBlobs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/redis", "old", legacy, oneFile)
	variant := headDigest(t, h, "/v2/library/redis/manifests/old", containerdHeader("1.6.20"))
	if variant == img.ManifestDigest {
		t.Fatal("no variant made")
	}
	// The original, fetched by digest (cached as a manifest).
	if r := h.do(t, http.MethodGet, "/v2/library/redis/manifests/"+img.ManifestDigest.String(), containerdAccept); r.status != http.StatusOK {
		t.Fatalf("original by digest: %d", r.status)
	}
	variantBytes := h.do(t, http.MethodGet, "/v2/library/redis/manifests/"+variant.String(), containerdAccept).body

	for _, tc := range []struct {
		name string
		dgst digest.Digest
		body []byte
	}{
		{"original", img.ManifestDigest, img.Manifest},
		{"variant", variant, variantBytes},
	} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := h.do(t, method, "/v2/library/redis/blobs/"+tc.dgst.String(), containerdHeader("1.6.20"))
			if r.status != http.StatusOK || r.header.Get("Content-Type") != regtest.MediaTypeDockerManifest ||
				r.header.Get("Docker-Content-Digest") != tc.dgst.String() || r.header.Get("Content-Length") != strconv.Itoa(len(tc.body)) {
				t.Errorf("%s %s through /blobs/: %d, %q, %s, length %s", method, tc.name, r.status, r.header.Get("Content-Type"),
					r.header.Get("Docker-Content-Digest"), r.header.Get("Content-Length"))
			}
			if method == http.MethodGet && !bytes.Equal(r.body, tc.body) {
				t.Errorf("GET %s through /blobs/: other bytes", tc.name)
			}
		}
	}
	layer := digest.FromBytes(img.Layers[0])
	if r := h.do(t, http.MethodGet, "/v2/library/redis/blobs/"+layer.String(), nil); r.status != http.StatusOK || r.header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("a layer: %d %q", r.status, r.header.Get("Content-Type"))
	}
	// Another repository holds neither: the manifest is not its to give.
	if r := h.do(t, http.MethodGet, "/v2/library/other/blobs/"+img.ManifestDigest.String(), nil); r.status == http.StatusOK {
		t.Errorf("another repository got the manifest through /blobs/: %q", r.header.Get("Content-Type"))
	}
}
