//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestReplicasShareAnS3Cache: two regnorm processes on one bucket of a real
// S3-compatible server act as one mirror, for containerd 1.6.8 and 2.3.4.
func TestReplicasShareAnS3Cache(t *testing.T) {
	registryURL, registry := startRegistry(t)
	bucketDir := t.TempDir()
	s3, err := regtest.StartS3(versitygwBin, bucketDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3.Close)
	keys := t.TempDir()
	os.WriteFile(filepath.Join(keys, "access"), []byte(s3.AccessKey), 0o600)
	os.WriteFile(filepath.Join(keys, "secret"), []byte(s3.SecretKey), 0o600)
	cacheYAML := fmt.Sprintf(`cache:
  driver: s3
  s3:
    bucket: %s
    region: %s
    endpoint: %s
    forcePathStyle: true
    rootDirectory: /regnorm
    accessKeyFile: %s
    secretKeyFile: %s
`, s3.Bucket, s3.Region, s3.Endpoint, filepath.Join(keys, "access"), filepath.Join(keys, "secret"))

	img := pushXattrImage(t, registryURL, "library/both", "v1", legacyConfig)
	a, _ := startRegnorm(t, registryURL, cacheYAML)
	b, _ := startRegnorm(t, registryURL, cacheYAML)

	// Both replicas normalize the same cold image at the same moment, for
	// a node that needs both rules (1.6.8) and one that needs the config
	// rule only (2.3.4): one variant each, the same on both replicas.
	variants := map[string][]string{"containerd/1.6.8": make([]string, 2), "containerd/2.3.4": make([]string, 2)}
	var wg sync.WaitGroup
	for ua, digests := range variants {
		for i, replica := range []string{a, b} {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodHead, replica+"/v2/library/both/manifests/v1", nil)
				req.Header.Set("User-Agent", ua)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("replica %d, %s: %d", i, ua, resp.StatusCode)
				}
				digests[i] = resp.Header.Get("Docker-Content-Digest")
			})
		}
	}
	wg.Wait()
	for ua, d := range variants {
		if d[0] == "" || d[0] != d[1] || d[0] == img.ManifestDigest.String() {
			t.Fatalf("%s: replicas answered %q and %q (original %s)", ua, d[0], d[1], img.ManifestDigest)
		}
	}
	digests, modern := variants["containerd/1.6.8"], variants["containerd/2.3.4"]
	if digests[0] == modern[0] {
		t.Fatalf("1.6.8 and 2.3.4 got the same variant %s", digests[0])
	}

	// A node pulls through replica A and runs the image.
	nodeA := startContainerdBin(t, oldContainerdBin, a)
	if _, err := nodeA.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("pull through replica A: %v", err)
	}
	if got := nodeA.run(t, "docker.io/library/both:v1"); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q", got)
	}

	// With the upstream gone, another node pulls through replica B: every
	// answer comes from the shared cache, with the same digests.
	registry.stop()
	upstreamBefore := metric(t, b, "regnorm_upstream_requests_total")
	nodeB := startContainerdBin(t, oldContainerdBin, b)
	if _, err := nodeB.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("pull through replica B from the shared cache: %v", err)
	}
	if got := nodeB.repoDigest(t, "docker.io/library/both:v1"); got != digests[0] {
		t.Fatalf("replica B served %s, replica A %s", got, digests[0])
	}
	// A containerd 2.3.4 node (transfer service) too.
	node2 := startContainerdVersion(t, containerd234, containerdOptions{Mirror: b})
	if _, err := node2.pull(t, "docker.io/library/both:v1"); err != nil {
		t.Fatalf("containerd 2.3.4 through replica B from the shared cache: %v", err)
	}
	if got := node2.repoDigest(t, "docker.io/library/both:v1"); got != modern[0] {
		t.Fatalf("replica B served %s to containerd 2.3.4, both replicas made %s for it", got, modern[0])
	}
	if got := node2.run(t, "docker.io/library/both:v1"); got != "hello from regnorm e2e" {
		t.Fatalf("container printed %q on containerd 2.3.4", got)
	}
	if n := metric(t, b, "regnorm_upstream_requests_total") - upstreamBefore; n != 0 {
		t.Fatalf("replica B sent %v requests upstream", n)
	}

	// The bucket is consistent: no temporary object left, and every blob
	// is whole and named by its digest.
	root := filepath.Join(bucketDir, s3.Bucket, "regnorm")
	blobs := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasPrefix(rel, "_uploads") {
			t.Errorf("temporary object left in the bucket: %s", rel)
		}
		if strings.HasPrefix(rel, "blobs/") && strings.HasSuffix(rel, "/data") {
			b, _ := os.ReadFile(p)
			sum := sha256.Sum256(b)
			if want := filepath.Base(filepath.Dir(p)); hex.EncodeToString(sum[:]) != want {
				t.Errorf("blob %s does not hash to its name", rel)
			}
			blobs++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Original config and two layers, the repackaged layer and new config.
	if blobs != 5 {
		t.Fatalf("%d blobs in the bucket, want 5", blobs)
	}
}
