//go:build e2e

package e2e

import (
	"strings"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestDockerZstdLayers: containerd 1.6.20 cannot unpack Docker's zstd layer
// type (what buildkit writes with oci-mediatypes off); through regnorm it
// gets the layers typed as OCI zstd, pulls and runs the image. containerd
// 2.3.4, which unpacks the type, gets the upstream's manifest.
func TestDockerZstdLayers(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	img := pushHello(t, registryURL, "buildkit/app", "v1", regtest.ImageOptions{LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.zstd"})
	proxyURL, _ := startRegnorm(t, registryURL, "")

	probe := startContainerd(t, proxyURL, registryHost)
	_, err := probe.pull(t, registryHost+"/buildkit/app:v1")
	if err == nil || !strings.Contains(err.Error(), "no processor for media-type") {
		t.Fatalf("direct pull on containerd 1.6.20: got %v, want 'no processor for media-type'", err)
	}
	ref := "docker.io/buildkit/app:v1"
	node := startContainerd(t, proxyURL) // not the probe's (see TestSymlinkXattrImages)
	if _, err := node.pull(t, ref); err != nil {
		t.Fatalf("containerd 1.6.20 through regnorm: %v", err)
	}
	if got := node.run(t, ref); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q", got)
	}
	fixed := node.repoDigest(t, ref)
	if fixed == img.ManifestDigest.String() {
		t.Fatal("1.6.20 pulled the original")
	}

	node2 := startContainerdVersion(t, containerd234, containerdOptions{Mirror: proxyURL})
	if _, err := node2.pull(t, ref); err != nil {
		t.Fatalf("containerd 2.3.4 through regnorm: %v", err)
	}
	if got := node2.run(t, ref); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q on 2.3.4", got)
	}
	if got := node2.repoDigest(t, ref); got != img.ManifestDigest.String() {
		t.Fatalf("containerd 2.3.4 got %s, want the upstream's %s", got, img.ManifestDigest)
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="zstd-media-type"`); n != float64(len(img.Layers)) {
		t.Fatalf("zstd-media-type rewrites = %v, want one per layer (%d)", n, len(img.Layers))
	}
}
