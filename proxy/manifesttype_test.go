package proxy_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// hostileUpstream answers every manifest request with content, sent as
// contentType.
func hostileUpstream(t *testing.T, contentType string, content []byte) *url.URL {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			http.Error(w, `{"errors":[{"code":"NAME_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.Write(content)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u
}

// pushWithoutMediaType pushes an OCI image whose manifest has no mediaType
// member (optional in OCI): its shape alone says what it is.
func pushWithoutMediaType(t *testing.T, h *harness, repo, tag string) regtest.Image {
	t.Helper()
	img, err := regtest.BuildImage(regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip}, oneFile)
	if err != nil {
		t.Fatal(err)
	}
	member := []byte(`"mediaType": "` + ocispec.MediaTypeImageManifest + `",`)
	if !bytes.Contains(img.Manifest, member) {
		t.Fatalf("the generated manifest lacks %s", member)
	}
	img.Manifest = bytes.Replace(img.Manifest, member, nil, 1)
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	c := h.reg.Client()
	for _, b := range append([][]byte{img.Config}, img.Layers...) {
		if err := c.PushBlob(context.Background(), repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushManifest(context.Background(), repo, tag, ocispec.MediaTypeImageManifest, img.Manifest); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestUpstreamCannotRetypeAnothersManifest: the manifest cache is shared by
// digest across upstreams, and a digest does not cover the Content-Type. A
// hostile upstream that serves a good image's exact bytes as an index must
// not change how the good upstream's image is served, by tag or by digest:
// the type is the content's own. What contradicts the content is refused
// as the upstream's error and never cached.
func TestUpstreamCannotRetypeAnothersManifest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		push func(t *testing.T, h *harness) regtest.Image
		// hostileType is what the hostile upstream calls the bytes.
		hostileType string
		// wantHostile is the status of a pull through the hostile upstream.
		wantHostile int
		wantType    string
	}{
		{"a Docker manifest sent as an index", func(t *testing.T, h *harness) regtest.Image {
			return h.push(t, "library/good", "v1", regtest.ImageOptions{}, oneFile)
		}, ocispec.MediaTypeImageIndex, http.StatusBadGateway, regtest.MediaTypeDockerManifest},
		{"an OCI manifest without mediaType sent as an index", func(t *testing.T, h *harness) regtest.Image {
			return pushWithoutMediaType(t, h, "library/good", "v1")
		}, ocispec.MediaTypeImageIndex, http.StatusBadGateway, ocispec.MediaTypeImageManifest},
		{"a Docker manifest sent as OCI's", func(t *testing.T, h *harness) regtest.Image {
			return h.push(t, "library/good", "v1", regtest.ImageOptions{}, oneFile)
		}, ocispec.MediaTypeImageManifest, http.StatusOK, regtest.MediaTypeDockerManifest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const hostile = "hostile.example"
			h := newHarness(t, harnessOptions{})
			img := tt.push(t, h)
			// The hostile upstream serves what it copied from the good one.
			h.opts.more = []upstream.Config{{Name: hostile, URL: hostileUpstream(t, tt.hostileType, img.Manifest)}}
			h.restart(t)

			tag := "/v2/library/good/manifests/v1?ns=docker.io"
			byDigest := "/v2/library/good/manifests/" + img.ManifestDigest.String() + "?ns=docker.io"
			hostilePull := func(ref string, want int) {
				t.Helper()
				r := h.do(t, http.MethodGet, "/v2/library/good/manifests/"+ref+"?ns="+hostile, containerdAccept)
				switch {
				case r.status != want:
					t.Fatalf("pull of %s through the hostile upstream: %d %s, want %d", ref, r.status, r.header.Get("Content-Type"), want)
				case r.status != http.StatusOK:
					if code := r.ociError(t); code != "MANIFEST_INVALID" {
						t.Errorf("hostile pull of %s: code %s, want MANIFEST_INVALID", ref, code)
					}
				case r.header.Get("Content-Type") != tt.wantType:
					t.Errorf("hostile pull of %s served as %s, want the content's %s", ref, r.header.Get("Content-Type"), tt.wantType)
				}
			}
			// Before the good upstream's pull, and after.
			hostilePull(img.ManifestDigest.String(), tt.wantHostile)
			if r := h.do(t, http.MethodGet, tag, containerdAccept); r.status != http.StatusOK || r.header.Get("Content-Type") != tt.wantType {
				t.Fatalf("good pull by tag: %d %s", r.status, r.header.Get("Content-Type"))
			}
			hostilePull("latest", tt.wantHostile)
			// Cached now, and the hostile upstream says yes to its HEAD:
			// its word is not enough where it never sent the bytes (as
			// the content's type), so it is asked for them, and they fail
			// as before the good pull.
			hostilePull(img.ManifestDigest.String(), tt.wantHostile)
			for _, p := range []string{tag, byDigest} {
				for _, method := range []string{http.MethodHead, http.MethodGet} {
					r := h.do(t, method, p, containerdAccept)
					if got := r.header.Get("Content-Type"); r.status != http.StatusOK || got != tt.wantType {
						t.Errorf("%s %s after the hostile pull: %d, served as %s, want %s", method, p, r.status, got, tt.wantType)
					}
					if method == http.MethodGet && !bytes.Equal(r.body, img.Manifest) {
						t.Errorf("GET %s: the bytes changed", p)
					}
				}
			}
			// A restart or another replica reads the cache the same way.
			h.restart(t)
			if r := h.do(t, http.MethodGet, byDigest, containerdAccept); r.status != http.StatusOK || r.header.Get("Content-Type") != tt.wantType {
				t.Errorf("after a restart: %d, served as %s", r.status, r.header.Get("Content-Type"))
			}
		})
	}
}
