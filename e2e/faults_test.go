//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// bigXattrImage is an image with a 24 MiB layer that needs repackaging (a
// symlink with a user.* xattr at its end).
func bigXattrImage(t *testing.T, registryURL, repo string) regtest.Image {
	t.Helper()
	img, err := regtest.BuildImage(regtest.ImageOptions{}, []regtest.File{
		{Name: "big", Content: regtest.RandomBytes(24 << 20), Mode: 0o644},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "big", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), repo, "v1", img); err != nil {
		t.Fatal(err)
	}
	return img
}

// cacheVerifies checks that every blob in a filesystem cache holds exactly
// the bytes of its digest, and returns how many temporary uploads are left.
func cacheVerifies(t *testing.T, root string) (blobs, uploads int) {
	t.Helper()
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "data" {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		parts := strings.Split(rel, string(filepath.Separator))
		switch {
		case parts[0] == "_uploads":
			uploads++
		case parts[0] == "blobs" && len(parts) == 5:
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			if got := hex.EncodeToString(h.Sum(nil)); got != parts[3] {
				t.Errorf("cache holds wrong bytes: %s has sha256 %s", rel, got)
			}
			blobs++
		}
		return nil
	})
	return blobs, uploads
}

// TestKillAndRestart: regnorm killed with SIGKILL while it downloads and
// repackages a layer, again and again, never publishes partial content;
// restarted on the same cache it removes the leftovers and finishes the work.
func TestKillAndRestart(t *testing.T) {
	registryURL, _ := startRegistry(t)
	img := bigXattrImage(t, registryURL, "library/big")
	// 24 MiB at 16 MiB/s: each attempt is killed during the download or
	// just after it, during the repackaging.
	slow := serveLocal(t, newRelay(registryURL, 16<<20, 0))
	dir := t.TempDir()
	root := filepath.Join(dir, "cache")
	cacheYAML := fmt.Sprintf("stallTimeout: 500ms\ncache:\n  driver: filesystem\n  filesystem:\n    rootDirectory: %s\n", root)

	leftovers := 0
	for i, after := range []time.Duration{500 * time.Millisecond, 1200 * time.Millisecond, 1700 * time.Millisecond, 2200 * time.Millisecond} {
		url, p := startRegnorm(t, slow, cacheYAML)
		go func() {
			req, _ := http.NewRequest("GET", url+"/v2/library/big/manifests/v1", nil)
			req.Header.Set("Accept", regtest.MediaTypeDockerManifest)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
		time.Sleep(after)
		p.cmd.Process.Kill() // SIGKILL, by PID
		<-p.done
		_, uploads := cacheVerifies(t, root)
		t.Logf("kill %d after %s: %d temporary uploads left", i, after, uploads)
		leftovers += uploads
	}
	if leftovers == 0 {
		t.Fatal("no kill landed while regnorm was writing: the test proves nothing")
	}

	// Dead writers' uploads are removed once idle for 4 stall timeouts.
	time.Sleep(2500 * time.Millisecond)
	url, _ := startRegnorm(t, registryURL, cacheYAML)
	deadline := time.Now().Add(10 * time.Second)
	for _, uploads := cacheVerifies(t, root); uploads > 0; _, uploads = cacheVerifies(t, root) {
		if time.Now().After(deadline) {
			t.Fatalf("%d leftover uploads were not removed", uploads)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The work completes: the manifest is normalized and every blob it
	// names is served and verifies.
	body := getOK(t, url+"/v2/library/big/manifests/v1", regtest.MediaTypeDockerManifest)
	if digest.FromBytes(body) == img.ManifestDigest {
		t.Fatal("the manifest was not normalized")
	}
	for _, d := range blobDigests(t, body) {
		if got := digest.FromBytes(getOK(t, url+"/v2/library/big/blobs/"+d, "")); got.String() != d {
			t.Fatalf("blob %s: got %s", d, got)
		}
	}
	cacheVerifies(t, root)
}

// TestFullDisk: a filesystem cache on a 16 MiB tmpfs. A 24 MiB layer cannot
// be cached: the client gets an error, the log says why, and nothing partial
// stays. Once there is space again, the same pull works.
func TestFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("REGNORM_REQUIRE_ALL") != "" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	registryURL, _ := startRegistry(t)
	img := bigXattrImage(t, registryURL, "library/big")
	root := filepath.Join(t.TempDir(), "cache")
	os.MkdirAll(root, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", root).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", root).Run() })
	url, p := startRegnorm(t, registryURL, fmt.Sprintf("cache:\n  driver: filesystem\n  filesystem:\n    rootDirectory: %s\n", root))

	layer := "/v2/library/big/blobs/" + digest.FromBytes(img.Layers[0]).String()
	resp, err := http.Get(url + layer)
	if err != nil {
		t.Fatal(err)
	}
	got, readErr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && readErr == nil && digest.FromBytes(got) == digest.FromBytes(img.Layers[0]) {
		t.Fatal("a layer larger than the disk was served whole: from where?")
	}
	t.Logf("full disk: client got %d, %d bytes, read error %v", resp.StatusCode, len(got), readErr)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.out.String(), "no space left on device") {
		if time.Now().After(deadline) {
			t.Fatal("the log does not say the disk is full")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, uploads := cacheVerifies(t, root); uploads != 0 {
		t.Errorf("%d partial uploads left on the full disk", uploads)
	}
	if r := getStatus(t, url+"/readyz"); r != http.StatusOK {
		t.Errorf("/readyz %d on a full disk: reads still work, so it should stay ready", r)
	}

	// Space again: the same request works, without a restart.
	if out, err := exec.Command("mount", "-o", "remount,size=128m", root).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	if d := digest.FromBytes(getOK(t, url+layer, "")); d != digest.FromBytes(img.Layers[0]) {
		t.Fatalf("after freeing space: got %s", d)
	}
	getOK(t, url+"/v2/library/big/manifests/v1", regtest.MediaTypeDockerManifest)
	if blobs, _ := cacheVerifies(t, root); blobs < 2 {
		t.Fatalf("%d blobs cached after recovery", blobs)
	}
}

func getOK(t *testing.T, url, accept string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v %.200s", url, resp.StatusCode, err, body)
	}
	return body
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// blobDigests returns the config and layer digests a manifest names.
func blobDigests(t *testing.T, manifest []byte) []string {
	t.Helper()
	var out []string
	for _, part := range strings.Split(string(manifest), `"digest"`)[1:] {
		i := strings.Index(part, "sha256:")
		out = append(out, part[i:i+71])
	}
	return out
}
