//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestIndexWithWrongSizes: an index whose linux/amd64 entry understates
// its child's size by 100 bytes (Docker's "docker manifest" before 18.09,
// docker/cli#1135) fails on every containerd straight from the registry;
// through regnorm the entry gets the size of the child regnorm fetched
// (by digest), and the image is pulled and runs on 1.6.20, 1.6.8 and 2.3.4.
// An index with the right sizes is served as upstream has it, and two fresh
// mirrors make the same digest.
func TestIndexWithWrongSizes(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	amd64 := pushHello(t, registryURL, "legacy/coredns", "amd64", regtest.ImageOptions{})
	arm64 := pushHello(t, registryURL, "legacy/coredns", "arm64", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip})
	wrong := pushIndexSized(t, registryURL, "legacy/coredns", "v1", amd64, arm64, -100)
	right := pushIndexSized(t, registryURL, "legacy/coredns", "right", amd64, arm64, 0)
	proxyURL, _ := startRegnorm(t, registryURL, "")
	// What containerd says: the bytes it read, then the size it was told.
	wantErr := fmt.Sprintf("failed size validation: %d != %d", len(amd64.Manifest), len(amd64.Manifest)-100)

	for _, kind := range []containerdKind{containerd1620, containerd168, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
			_, err := node.pull(t, registryHost+"/legacy/coredns:v1")
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("direct pull: got %v, want %q", err, wantErr)
			}
			t.Logf("containerd %s straight from the registry: %v", kind.name, err)
			ref := "docker.io/legacy/coredns:v1"
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			fixed := node.repoDigest(t, ref)
			if fixed == wrong.String() {
				t.Fatal("pulled the original index")
			}
			t.Logf("containerd %s through regnorm: %s (original %s)", kind.name, fixed, wrong)
			// The index with the right sizes: the upstream's digest.
			good := "docker.io/legacy/coredns:right"
			if _, err := node.pull(t, good); err != nil {
				t.Fatalf("pull of the right index through regnorm: %v", err)
			}
			if got := node.repoDigest(t, good); got != right.String() {
				t.Fatalf("the right index came as %s, want the upstream's %s", got, right)
			}
		})
	}

	// The variant: the one size changed, nothing else; the same on a fresh
	// mirror.
	fixed := headAs(t, proxyURL, "/v2/legacy/coredns/manifests/v1?ns=docker.io", "containerd/1.6.20")
	var orig, got ocispec.Index
	json.Unmarshal(getBody(t, registryURL+"/v2/legacy/coredns/manifests/v1"), &orig)
	json.Unmarshal(getBody(t, proxyURL+"/v2/legacy/coredns/manifests/"+fixed+"?ns=docker.io"), &got)
	orig.Manifests[0].Size = int64(len(amd64.Manifest))
	if !reflect.DeepEqual(orig, got) {
		t.Fatalf("variant %+v, want the original with amd64's size %d", got, len(amd64.Manifest))
	}
	fresh, _ := startRegnorm(t, registryURL, "")
	if again := headAs(t, fresh, "/v2/legacy/coredns/manifests/v1?ns=docker.io", "containerd/1.6.20"); again != fixed {
		t.Fatalf("a fresh mirror made %s, the first %s", again, fixed)
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="index-size"`); n < 1 {
		t.Fatalf("index-size rewrites = %v", n)
	}
}

// pushIndexSized pushes an OCI index of an amd64 and an arm64 image, the
// amd64 entry's size off by delta, and returns its digest.
func pushIndexSized(t *testing.T, registryURL, repo, tag string, amd64, arm64 regtest.Image, delta int64) digest.Digest {
	t.Helper()
	c := &regtest.Client{Base: registryURL}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd64.ManifestDigest, Size: int64(len(amd64.Manifest)) + delta, Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: ocispec.MediaTypeImageManifest, Digest: arm64.ManifestDigest, Size: int64(len(arm64.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	if err := c.PushManifest(context.Background(), repo, tag, ocispec.MediaTypeImageIndex, raw); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(raw)
}

// headAs is the digest regnorm answers a HEAD of path with, for userAgent.
func headAs(t *testing.T, base, path, userAgent string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, base+path, nil)
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s as %s: %d", path, userAgent, resp.StatusCode)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// getBody GETs url (a manifest, of any type) and returns its body.
func getBody(t *testing.T, url string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}
