//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

var legacyConfig = regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}

// TestOctetStreamConfigImages reproduces containerd's failure on images
// whose config is declared application/octet-stream (Docker before 1.11),
// then pulls the same images through regnorm by tag and runs them, on
// containerd 1.6.20 and 2.3.4.
func TestOctetStreamConfigImages(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	legacy := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	indexDigest := pushIndex(t, registryURL, "library/legacy-multi", "v1", legacy, pushHello(t, registryURL, "library/legacy-multi", "arm64", regtest.ImageOptions{}))
	proxyURL, _ := startRegnorm(t, registryURL, "")

	for _, kind := range []containerdKind{containerd1620, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			for _, tt := range []struct{ name, repo, original string }{
				{"image", "library/legacy", legacy.ManifestDigest.String()},
				{"index with a broken linux/amd64 child", "library/legacy-multi", indexDigest.String()},
			} {
				t.Run(tt.name, func(t *testing.T) {
					// A node of its own: content left by another case would hide the bug.
					node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
					// Straight from the upstream, containerd fails as in the wild.
					octetStreamFails(t, node, registryHost+"/"+tt.repo+":v1", legacy)
					// Through regnorm, by tag: pulled, and it runs.
					ref := "docker.io/" + tt.repo + ":v1"
					if _, err := node.pull(t, ref); err != nil {
						t.Fatalf("pull through regnorm: %v", err)
					}
					if got := node.run(t, ref); got != "hello from regnorm e2e" {
						t.Fatalf("container printed %q", got)
					}
					if got := node.repoDigest(t, ref); got == tt.original {
						t.Fatalf("pulled under the original digest %s", got)
					}
				})
			}
		})
	}

	// The report names both, as the variant of the config rule, and the
	// metrics count them. An index is named by all of a client's rules (its
	// children decide which apply): 1.6.20's include the zstd media type.
	report := variantReport(t, proxyURL)
	for key, want := range map[string]string{
		legacy.ManifestDigest.String() + " config-media-type,diff-ids":                                    "1.6.20,2.3.4",
		indexDigest.String() + " config-media-type,zstd-media-type,index-sizes,layer-media-type,diff-ids": "1.6.20",
		indexDigest.String() + " config-media-type,index-sizes,layer-media-type,diff-ids":                 "2.3.4",
	} {
		if got := report[key]; got != want {
			t.Fatalf("report entry %s: clients %q, want %s (report %v)", key, got, want, report)
		}
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="config-media-type"`); n != 1 {
		t.Fatalf("config-media-type rewrites = %v, want 1 (the index's child is the same manifest)", n)
	}
}

// octetStreamFails pulls ref, an image (or an index whose linux/amd64 child
// is img) with an application/octet-stream config, over CRI with no mirror
// in between, and asserts containerd's failure: the unpacker never sees a
// config type it knows, so the layers are never fetched. 1.x fails the
// pull. 2.x (transfer service) reports success: it stores the manifest
// converted to the Docker config type (docker.ConvertManifest; an index
// as it is) without its layers, and running the image fails.
func octetStreamFails(t *testing.T, node *containerd, ref string, img regtest.Image) {
	t.Helper()
	_, err := node.pull(t, ref)
	msg := ""
	if node.kind.major == 1 {
		if err == nil {
			t.Fatalf("containerd %s pulled %s, want 'failed to extract layer ... not found'", node.kind.name, ref)
		}
		msg = err.Error()
	} else {
		if err != nil {
			t.Fatalf("containerd %s: pull %s: %v; want success without the layers", node.kind.name, ref, err)
		}
		if msg, err = node.tryRun(t, ref); err == nil {
			t.Fatalf("containerd %s ran %s: %s", node.kind.name, ref, msg)
		}
	}
	missing := false
	for _, layer := range img.Layers {
		missing = missing || strings.Contains(msg, "content digest "+digest.FromBytes(layer).String()+": not found")
	}
	if !strings.Contains(msg, "failed to extract layer") || !missing {
		t.Fatalf("containerd %s, %s: got %q, want 'failed to extract layer ... content digest <a layer>: not found'", node.kind.name, ref, msg)
	}
}

// pushIndex pushes an OCI index of amd64 and arm64 images and returns its digest.
func pushIndex(t *testing.T, registryURL, repo, tag string, amd64, arm64 regtest.Image) digest.Digest {
	t.Helper()
	// The children must be in the index's repository.
	c := &regtest.Client{Base: registryURL}
	for _, img := range []regtest.Image{amd64, arm64} {
		if err := c.PushImage(context.Background(), repo, img.ManifestDigest.String(), img); err != nil {
			t.Fatal(err)
		}
	}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: arm64.ManifestDigest, Size: int64(len(arm64.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd64.ManifestDigest, Size: int64(len(amd64.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	if err := c.PushManifest(context.Background(), repo, tag, ocispec.MediaTypeImageIndex, raw); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(raw)
}
