//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestRegnormVerifyRederivesVariants: for each kind of variant the e2e
// tests make (a config's type, an index over such a child, wrong diff IDs,
// zstd layers recompressed to gzip for containerd 1.4, symlink xattrs
// repackaged, gzip layers typed as plain tar), pulled by tag through a
// regnorm that attests with a key, the built binary's `regnorm verify`
// reads the attestation through regnorm, derives the variant again from
// the upstream in memory, and finds the same bytes (exit 0); with another
// key, or an --original the predicate does not name, it refuses (exit 2).
func TestRegnormVerifyRederivesVariants(t *testing.T) {
	registryURL, _ := startRegistry(t)
	legacy := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	pushIndex(t, registryURL, "library/legacy-multi", "v1", legacy, pushHello(t, registryURL, "library/legacy-multi", "arm64", regtest.ImageOptions{}))
	good := pushHello(t, registryURL, "paketo/app", "good", regtest.ImageOptions{})
	var goodManifest ocispec.Manifest
	var goodConfig ocispec.Image
	json.Unmarshal(good.Manifest, &goodManifest)
	json.Unmarshal(good.Config, &goodConfig)
	pushWithDiffIDs(t, registryURL, "paketo/app", "wrong", good, []digest.Digest{goodConfig.RootFS.DiffIDs[0], goodManifest.Layers[1].Digest})
	pushHello(t, registryURL, "buildkit/app", "v1", regtest.ImageOptions{LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.zstd"})
	pushXattrImage(t, registryURL, "library/xattr", "v1", regtest.ImageOptions{})
	gz := pushHello(t, registryURL, "buildah/app", "gzip", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip})
	mistyped := bytes.ReplaceAll(gz.Manifest, []byte(`"`+ocispec.MediaTypeImageLayerGzip+`"`), []byte(`"`+ocispec.MediaTypeImageLayer+`"`))
	if err := (&regtest.Client{Base: registryURL}).PushManifest(context.Background(), "buildah/app", "v1", ocispec.MediaTypeImageManifest, mistyped); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	writeAttestationKey(t, dir, "regnorm")
	writeAttestationKey(t, dir, "other")

	verify := func(t *testing.T, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(regnormBin, append([]string{"verify", "--plain-http", "--upstream", registryURL}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		case err != nil:
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, tt := range []struct{ name, repo, client string }{
		{"config type", "library/legacy:v1", "1.6.8"},
		{"index", "library/legacy-multi:v1", "1.6.8"},
		{"diff IDs", "paketo/app:wrong", "1.6.20"},
		{"zstd to gzip", "buildkit/app:v1", "1.4.13"},
		{"symlink xattrs", "library/xattr:v1", "1.6.8"},
		{"layer type", "buildah/app:v1", "1.6.20"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A regnorm a case: see the report of issue 25 part 3 on what
			// one shared across these images answered.
			proxyURL, proc := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")
			proxyHost := strings.TrimPrefix(proxyURL, "http://")
			repo, tag, _ := strings.Cut(tt.repo, ":")
			variant := variantFor(t, proxyURL, repo, tag, tt.client)
			image := proxyHost + "/" + repo + "@" + variant
			out, code := verify(t, "--key", filepath.Join(dir, "regnorm.pub"), image)
			if code != 0 || !strings.Contains(out, "rederived    OK   "+variant+", identical") {
				t.Fatalf("regnorm verify %s: exit %d, want 0\n%s\nregnorm:\n%s", image, code, out, proc.out.tail(4<<10))
			}
			t.Logf("regnorm verify --key regnorm.pub %s:\n%s", image, out)
			if out, code := verify(t, "--key", filepath.Join(dir, "other.pub"), image); code != 2 {
				t.Errorf("another key: exit %d, want 2\n%s", code, out)
			}
			if out, code := verify(t, "--key", filepath.Join(dir, "regnorm.pub"), "--original", good.ManifestDigest.String(), image); code != 2 ||
				!strings.Contains(out, "names original") {
				t.Errorf("--original another: exit %d, want 2\n%s", code, out)
			}
		})
	}
}
