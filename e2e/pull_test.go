//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"os"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
)

// pushHello pushes an image whose entrypoint prints a known line.
func pushHello(t *testing.T, registryURL, repo, tag string, opts regtest.ImageOptions) regtest.Image {
	t.Helper()
	return pushHelloWith(t, registryURL, repo, tag, opts,
		[]regtest.File{{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "etc/motd", Content: []byte("regnorm\n")}})
}

// pushHelloWith pushes the hello binary's layer and then layer.
func pushHelloWith(t *testing.T, registryURL, repo, tag string, opts regtest.ImageOptions, layer []regtest.File) regtest.Image {
	t.Helper()
	bin, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	opts.Entrypoint = []string{"/hello"}
	img, err := regtest.BuildImage(opts, []regtest.File{{Name: "hello", Mode: 0o755, Content: bin}}, layer)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), repo, tag, img); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestContainerdPullsThroughMirror: containerd, configured with regnorm as
// its docker.io mirror, pulls by tag over CRI and runs the image; the
// requests reached regnorm, not a fallback; and a second node pulls from
// regnorm's cache while the upstream is down. On containerd 1.6.20 (local
// pull) and 2.3.4 (transfer service).
func TestContainerdPullsThroughMirror(t *testing.T) {
	for _, kind := range []containerdKind{containerd1620, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			registryURL, registry := startRegistry(t)
			img := pushHello(t, registryURL, "library/hello", "v1", regtest.ImageOptions{})
			proxyURL, _ := startRegnorm(t, registryURL, "")

			node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL})
			ref, err := node.pull(t, "docker.io/library/hello:v1")
			if err != nil {
				t.Fatalf("CRI PullImage through regnorm: %v", err)
			}
			t.Logf("pulled %s", ref)
			if got := node.run(t, "docker.io/library/hello:v1"); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}

			// containerd's requests reached regnorm: the HEAD that resolves the tag,
			// the manifest by digest, the config and both layers.
			if n := metric(t, proxyURL, "regnorm_http_requests_total", `route="manifest"`, `method="HEAD"`, `code="200"`); n < 1 {
				t.Fatalf("manifest HEADs through regnorm = %v", n)
			}
			if n := metric(t, proxyURL, "regnorm_http_requests_total", `route="blob"`, `method="GET"`, `code="200"`); n != 3 {
				t.Fatalf("blob GETs through regnorm = %v, want 3 (config and two layers)", n)
			}
			// A clean image keeps its upstream digest: nothing was rewritten.
			if got := node.repoDigest(t, "docker.io/library/hello:v1"); got != img.ManifestDigest.String() {
				t.Fatalf("clean image pulled as %s, upstream digest is %s", got, img.ManifestDigest)
			}
			if n := metric(t, proxyURL, "regnorm_rewrites_total"); n != 0 {
				t.Fatalf("rewrites = %v for a clean image", n)
			}
			if n := metric(t, proxyURL, "regnorm_upstream_requests_total", `result="200"`); n < 4 {
				t.Fatalf("upstream requests through regnorm = %v, want the manifest and three blobs", n)
			}

			// A second node, upstream gone: everything comes from regnorm's cache.
			registry.stop()
			hitsBefore := metric(t, proxyURL, "regnorm_cache_requests_total", `kind="blob"`, `result="hit"`)
			other := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL})
			if _, err := other.pull(t, "docker.io/library/hello:v1"); err != nil {
				t.Fatalf("pull from cache with upstream down: %v", err)
			}
			if n := metric(t, proxyURL, "regnorm_cache_requests_total", `kind="blob"`, `result="hit"`) - hitsBefore; n != 3 {
				t.Fatalf("blob cache hits for the second node = %v, want 3", n)
			}
			// Pinned by its original digest works too: the image is unmodified.
			if _, err := other.pull(t, "docker.io/library/hello@"+img.ManifestDigest.String()); err != nil {
				t.Fatalf("pull by digest: %v", err)
			}
		})
	}
}
