package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestOriginalSignatureReadsBoundedBundles: a registry whose one referrer
// of the original is a bundle artifact of many layers, none of which
// verifies, gets at most maxCandidates of them read, as it would get for
// as many referrers.
func TestOriginalSignatureReadsBoundedBundles(t *testing.T) {
	t.Parallel()
	original := digest.FromString("the original")
	bundle := []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`)
	bundleDigest := digest.FromBytes(bundle)
	layers := make([]ocispec.Descriptor, 50)
	for i := range layers {
		layers[i] = ocispec.Descriptor{MediaType: cosign.MediaTypeBundle, Digest: bundleDigest, Size: int64(len(bundle))}
	}
	manifest, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: cosign.MediaTypeBundle, Config: ocispec.DescriptorEmptyJSON, Layers: layers})
	manifestDigest := digest.FromBytes(manifest)
	index, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: cosign.MediaTypeBundle, Digest: manifestDigest, Size: int64(len(manifest))}}})

	var blobReads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case r.URL.Path == "/v2/vendor/app/referrers/"+original.String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Write(index)
		case r.URL.Path == "/v2/vendor/app/manifests/"+manifestDigest.String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", manifestDigest.String())
			w.Write(manifest)
		case r.URL.Path == "/v2/vendor/app/blobs/"+bundleDigest.String():
			blobReads.Add(1)
			w.Write(bundle)
		case strings.Contains(r.URL.Path, "/manifests/"):
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
		default:
			http.Error(w, `{"errors":[{"code":"NOT_FOUND"}]}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	reg := upstream.New(upstream.Config{Name: "example", URL: u}, upstream.Options{
		Retry: upstream.RetryPolicy{Attempts: 1, MaxWait: time.Minute}, Stall: 10 * time.Second,
		Metrics: upstream.NewMetrics(), Log: slog.New(slog.DiscardHandler)})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	c, err := originalSignature(context.Background(), reg.Repository("vendor/app"), original, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if c.verified != "" || c.firstErr == nil {
		t.Fatalf("a bundle that is none verified: %+v", c)
	}
	if n := blobReads.Load(); n > maxCandidates {
		t.Errorf("%d bundles read of one referrer's 50, want at most %d", n, maxCandidates)
	}
}
