//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestCompressedLayersTypedAsTar: an image whose gzip layers are declared
// as OCI's plain tar (buildah 1.8 - 1.9, containers/buildah#1589) fails on
// every containerd straight from the registry ("archive/tar: invalid tar
// header": OCI's plain type is not sniffed); through regnorm the layers get
// the gzip type, same blobs, and the image is pulled and runs on 1.6.20,
// 1.6.8 and 2.3.4. An image whose layers really are plain tar, typed so, is
// served as upstream has it; a fresh mirror makes the same variant.
func TestCompressedLayersTypedAsTar(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	img := pushHello(t, registryURL, "buildah/app", "gzip", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip})
	mistyped := bytes.ReplaceAll(img.Manifest, []byte(`"`+ocispec.MediaTypeImageLayerGzip+`"`), []byte(`"`+ocispec.MediaTypeImageLayer+`"`))
	if err := (&regtest.Client{Base: registryURL}).PushManifest(context.Background(), "buildah/app", "v1", ocispec.MediaTypeImageManifest, mistyped); err != nil {
		t.Fatal(err)
	}
	original := digest.FromBytes(mistyped)
	plain := pushHello(t, registryURL, "buildah/plain", "v1", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayer})
	proxyURL, _ := startRegnorm(t, registryURL, "")

	for _, kind := range []containerdKind{containerd1620, containerd168, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
			_, err := node.pull(t, registryHost+"/buildah/app:v1")
			if err == nil || !strings.Contains(err.Error(), "archive/tar: invalid tar header") {
				t.Fatalf("direct pull: got %v, want 'archive/tar: invalid tar header'", err)
			}
			t.Logf("containerd %s straight from the registry: %v", kind.name, err)
			ref := "docker.io/buildah/app:v1"
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			fixed := node.repoDigest(t, ref)
			if fixed == original.String() {
				t.Fatal("pulled the original")
			}
			t.Logf("containerd %s through regnorm: %s (original %s)", kind.name, fixed, original)
			good := "docker.io/buildah/plain:v1"
			if _, err := node.pull(t, good); err != nil {
				t.Fatalf("pull of the plain tar image through regnorm: %v", err)
			}
			if got := node.run(t, good); got != "hello from regnorm e2e" {
				t.Fatalf("plain tar image printed %q", got)
			}
			if got := node.repoDigest(t, good); got != plain.ManifestDigest.String() {
				t.Fatalf("the plain tar image came as %s, want the upstream's %s", got, plain.ManifestDigest)
			}
		})
	}

	// The variant: the layer types, nothing else; the same on a fresh mirror.
	fixed := headAs(t, proxyURL, "/v2/buildah/app/manifests/v1?ns=docker.io", "containerd/2.3.4")
	if got := getBody(t, proxyURL+"/v2/buildah/app/manifests/"+fixed+"?ns=docker.io"); !bytes.Equal(got, img.Manifest) {
		t.Fatalf("variant:\n%s\nwant the manifest as it was before its layers were mistyped:\n%s", got, img.Manifest)
	}
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	fresh, _ := startRegnorm(t, registryURL, "")
	if again := headAs(t, fresh, "/v2/buildah/app/manifests/v1?ns=docker.io", "containerd/2.3.4"); again != fixed {
		t.Fatalf("a fresh mirror made %s, the first %s", again, fixed)
	}
	// Two variants: 1.6.8's (symlink xattrs and layer media type) and the
	// one 1.6.20 and 2.3.4 share (layer media type).
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="layer-media-type"`); n != float64(2*len(m.Layers)) {
		t.Fatalf("layer-media-type rewrites = %v, want one per layer and variant (%d)", n, 2*len(m.Layers))
	}
}
