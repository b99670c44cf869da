package proxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// TestWebhookDoesNotPinWhatAnotherRepositoryHolds: Blobs reads an index
// variant's children from the cache by digest, without the repository's
// admission (9de0afd). But an index variant lists the original's children
// of other platforms, and its attestations, as the upstream index lists
// them (normalize.Platforms: never read, never judged), and an index is
// whatever its author wrote. Mallory, who can create Pods, writes an index
// in her own repository whose amd64 child needs a variant and whose
// s390x child is the digest of another tenant's private image, cached here
// from a repository she cannot read (an upstream that does not check an
// index's children, or an attestation descriptor). The webhook makes the
// variant, which keeps the s390x child as listed, and pins every blob the
// private image names, for PinFor (30 days by default), renewed whenever
// she creates a Pod: regnorm keeps another tenant's content from eviction
// on a request of a Pod that may not read it (and spends maxPinnedSize on
// it). A child the repository is not admitted to must be pinned only when
// regnorm made it from what the repository holds.
func TestWebhookDoesNotPinWhatAnotherRepositoryHolds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	secret := []regtest.File{{Name: "etc/secret", Content: []byte("another tenant's\n")}}
	private := h.push(t, "other/private", "v1", regtest.ImageOptions{}, secret)
	// The other tenant's node pulls it: its manifest and blobs are cached.
	if r := h.do(t, http.MethodGet, "/v2/other/private/manifests/"+private.ManifestDigest.String(), nil); r.status != http.StatusOK {
		t.Fatalf("pulling other/private's manifest: %d", r.status)
	}
	privateBlobs := []digest.Digest{digest.FromBytes(private.Config), digest.FromBytes(private.Layers[0])}
	for _, b := range privateBlobs {
		if r := h.do(t, http.MethodGet, "/v2/other/private/blobs/"+b.String(), nil); r.status != http.StatusOK {
			t.Fatalf("pulling other/private's blob %s: %d", b, r.status)
		}
	}

	amd := h.push(t, "mallory/app", "amd64", regtest.ImageOptions{}, baseLayer, xattrLayer)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd.ManifestDigest, Size: int64(len(amd.Manifest)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: private.ManifestDigest, Size: int64(len(private.Manifest)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: "s390x"}},
	}}
	index.SchemaVersion = 2
	raw, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	top := digest.FromBytes(raw)
	// Mallory's upstream serves her index as she wrote it.
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/mallory/app/manifests/") && strings.HasSuffix(r.URL.Path, "/"+top.String()) {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Header().Set("Docker-Content-Digest", top.String())
			w.Write(raw)
			return
		}
		h.front.relay(w, r)
	})

	_, patched := h.review(t, newPod([]string{"mallory/app@" + top.String()}, nil, nil), reviewOpts{})
	_, variant, _ := strings.Cut(patched.Spec.Containers[0].Image, "@")
	if variant == top.String() || variant == "" {
		t.Fatalf("not replaced: %q", patched.Spec.Containers[0].Image)
	}
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1, PinFor: webhook.DefaultPinFor}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, b := range privateBlobs {
		if _, err := h.store.StatBlob(context.Background(), b); err == nil {
			t.Errorf("blob %s of other/private, which mallory/app may not read, was pinned by her Pod's admission", b)
		}
	}
}
