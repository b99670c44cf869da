//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestWrongDiffIDs: an image whose config gives its second layer the
// digest of the compressed blob as diff ID (buildpacks lifecycle 0.21.11,
// buildpacks/lifecycle#1662), and one whose config lists one diff ID for
// two layers (the list short, as the same bug's other form left it), fail
// on every containerd straight from the registry; through regnorm the
// config gets the diff IDs computed from the layers (same layers), and both
// are pulled and run on 1.6.20, 1.6.8 and 2.3.4. An image with the right
// diff IDs is served as upstream has it; a fresh mirror makes the same
// variants.
func TestWrongDiffIDs(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	good := pushHello(t, registryURL, "paketo/app", "good", regtest.ImageOptions{})
	var goodManifest ocispec.Manifest
	var goodConfig ocispec.Image
	json.Unmarshal(good.Manifest, &goodManifest)
	json.Unmarshal(good.Config, &goodConfig)
	right := goodConfig.RootFS.DiffIDs
	layer1 := goodManifest.Layers[1].Digest
	wrong := pushWithDiffIDs(t, registryURL, "paketo/app", "wrong", good, []digest.Digest{right[0], layer1})
	short := pushWithDiffIDs(t, registryURL, "paketo/app", "short", good, right[:1])
	proxyURL, _ := startRegnorm(t, registryURL, "")

	for _, kind := range []containerdKind{containerd1620, containerd168, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
			// What containerd says: 1.6 the config's diff ID (here the
			// layer's own digest); 2.3 the one it computed, the config's,
			// and the layer.
			wantWrong := fmt.Sprintf("wrong diff id calculated on extraction %q", layer1)
			if kind.name == containerd234.name {
				wantWrong = fmt.Sprintf("wrong diff id %q calculated on extraction %q, desc %q", right[1], layer1, layer1)
			}
			for _, tc := range []struct {
				tag, wantErr string
				original     digest.Digest
			}{
				{"wrong", wantWrong, wrong},
				{"short", "number of layers and diffIDs don't match: 2 != 1", short},
			} {
				_, err := node.pull(t, registryHost+"/paketo/app:"+tc.tag)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("direct pull of %s: got %v, want %q", tc.tag, err, tc.wantErr)
				}
				t.Logf("containerd %s, %s, straight from the registry: %v", kind.name, tc.tag, err)
				ref := "docker.io/paketo/app:" + tc.tag
				if _, err := node.pull(t, ref); err != nil {
					t.Fatalf("pull of %s through regnorm: %v", tc.tag, err)
				}
				if got := node.run(t, ref); got != "hello from regnorm e2e" {
					t.Fatalf("%s: container printed %q", tc.tag, got)
				}
				fixed := node.repoDigest(t, ref)
				if fixed == tc.original.String() {
					t.Fatalf("%s: pulled the original", tc.tag)
				}
				t.Logf("containerd %s, %s, through regnorm: %s (original %s)", kind.name, tc.tag, fixed, tc.original)
			}
			ref := "docker.io/paketo/app:good"
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull of the right image through regnorm: %v", err)
			}
			if got := node.repoDigest(t, ref); got != good.ManifestDigest.String() {
				t.Fatalf("the right image came as %s, want the upstream's %s", got, good.ManifestDigest)
			}
		})
	}

	// The variants: the layers as they were, the config's diff IDs the
	// layers' own; the same on a fresh mirror.
	fresh, _ := startRegnorm(t, registryURL, "")
	for _, tag := range []string{"wrong", "short"} {
		path := "/v2/paketo/app/manifests/" + tag + "?ns=docker.io"
		fixed := headAs(t, proxyURL, path, "containerd/2.3.4")
		if again := headAs(t, fresh, path, "containerd/2.3.4"); again != fixed {
			t.Fatalf("%s: a fresh mirror made %s, the first %s", tag, again, fixed)
		}
		var m ocispec.Manifest
		json.Unmarshal(getBody(t, proxyURL+"/v2/paketo/app/manifests/"+fixed+"?ns=docker.io"), &m)
		if !reflect.DeepEqual(m.Layers, goodManifest.Layers) {
			t.Fatalf("%s: layers %+v, want the upstream's %+v", tag, m.Layers, goodManifest.Layers)
		}
		var config ocispec.Image
		json.Unmarshal(getBody(t, proxyURL+"/v2/paketo/app/blobs/"+m.Config.Digest.String()+"?ns=docker.io"), &config)
		if !slices.Equal(config.RootFS.DiffIDs, right) {
			t.Fatalf("%s: diff IDs %v, want the layers' %v", tag, config.RootFS.DiffIDs, right)
		}
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="diff-ids"`); n < 2 {
		t.Fatalf("diff-ids rewrites = %v", n)
	}
}

// pushWithDiffIDs pushes img with its config's diff IDs replaced by
// diffIDs, under repo:tag, and returns the manifest's digest.
func pushWithDiffIDs(t *testing.T, registryURL, repo, tag string, img regtest.Image, diffIDs []digest.Digest) digest.Digest {
	t.Helper()
	ctx := context.Background()
	c := &regtest.Client{Base: registryURL}
	var config ocispec.Image
	var m ocispec.Manifest
	json.Unmarshal(img.Config, &config)
	json.Unmarshal(img.Manifest, &m)
	config.RootFS.DiffIDs = diffIDs
	rawConfig, _ := json.Marshal(config)
	m.Config.Digest, m.Config.Size = digest.FromBytes(rawConfig), int64(len(rawConfig))
	raw, _ := json.Marshal(m)
	for _, b := range append(slices.Clone(img.Layers), rawConfig) {
		if err := c.PushBlob(ctx, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushManifest(ctx, repo, tag, m.MediaType, raw); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(raw)
}
