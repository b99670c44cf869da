//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// resolveFault is a relay in front of regnorm that fails every HEAD of a
// manifest by digest, as a mirror that fails for a moment does, and passes
// everything else on. It records what went through (a dropped request as
// status 0).
//
// How it fails matters to containerd (core/remotes/docker/resolver.go):
// 1.6.20 asks /blobs/ after any failure of /manifests/; 2.3.4 only after a
// 404 or an error of the connection (a timeout, a reset), not after a 5xx
// (it then fails the resolve and stores nothing). A dropped connection
// makes both ask /blobs/.
type resolveFault struct {
	url string
	mu  sync.Mutex
	log []string // "METHOD path status Content-Type"
}

func startResolveFault(t *testing.T, target string) *resolveFault {
	t.Helper()
	f := &resolveFault{}
	rp := relayTo(t, target, func(resp *http.Response) {
		f.add(resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/sha256:") {
			f.add(r.Method, r.URL.Path, 0, "")
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func (f *resolveFault) add(method, path string, status int, contentType string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fmt.Sprintf("%s %s %d %s", method, path, status, contentType))
}

// seen reports whether a request whose record begins with prefix went
// through, and returns the whole record for the message.
func (f *resolveFault) seen(prefix string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.log {
		if strings.HasPrefix(l, prefix) {
			return l, true
		}
	}
	return strings.Join(f.log, "\n"), false
}

// imageType is the TYPE column of `ctr -n k8s.io images ls` for ref: the
// media type containerd stored as the image's.
func (c *containerd) imageType(t *testing.T, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.kind.ctr, "--address", c.socket, "--namespace", "k8s.io", "images", "ls").Output()
	if err != nil {
		t.Fatalf("ctr images ls: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == ref {
			return f[1]
		}
	}
	t.Fatalf("ctr images ls lists no %s:\n%s", ref, out)
	return ""
}

// TestManifestTypeThroughBlobs: containerd, pulling by digest, falls back
// to HEAD /blobs/<digest> when HEAD /manifests/<digest> fails (here
// dropped by a relay in front of regnorm), and keeps the Content-Type it gets as
// the image's type for good (containerd#13007). The upstream serves the
// manifests through /blobs/ too, as distribution does (distribution#4812).
// Through regnorm the image is stored as the OCI index it is, and runs,
// on 1.6.20 (regnorm has nothing cached: the first asks are cold) and
// then 2.3.4 (cached).
func TestManifestTypeThroughBlobs(t *testing.T) {
	registryURL, _ := startRegistry(t)
	const repo = "library/blobtype"
	amd64 := pushHello(t, registryURL, repo, "amd64", regtest.ImageOptions{})
	arm64 := pushHello(t, registryURL, repo, "arm64", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip})
	index := pushIndexSized(t, registryURL, repo, "v1", amd64, arm64, 0)
	c := &regtest.Client{Base: registryURL}
	for _, m := range [][]byte{getBody(t, registryURL+"/v2/"+repo+"/manifests/"+index.String()), amd64.Manifest, arm64.Manifest} {
		if err := c.PushBlob(context.Background(), repo, m); err != nil {
			t.Fatal(err)
		}
	}
	proxyURL, _ := startRegnorm(t, registryURL, "")
	fault := startResolveFault(t, proxyURL)
	// The registry's own server is nowhere: only the mirror answers.
	hosts := map[string]string{"docker.io": mirrorHosts("http://"+freeAddr(t), fault.url)}

	for _, kind := range []containerdKind{containerd1620, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			node := startContainerdVersion(t, kind, containerdOptions{Hosts: hosts})
			ref := "docker.io/" + repo + "@" + index.String()
			_, err := node.pull(t, ref)
			if l, ok := fault.seen("HEAD /v2/" + repo + "/manifests/" + index.String() + " 0"); !ok {
				t.Fatalf("containerd did not ask HEAD /manifests/ (which fails); requests:\n%s", l)
			}
			if l, ok := fault.seen("HEAD /v2/" + repo + "/blobs/" + index.String() + " 200"); !ok {
				t.Fatalf("containerd did not fall back to HEAD /blobs/; requests:\n%s", l)
			} else {
				t.Logf("containerd %s fell back to: %s", kind.name, l)
			}
			got := node.imageType(t, ref)
			t.Logf("containerd %s stored %s as %s (pull: %v)", kind.name, ref, got, err)
			if err != nil {
				t.Fatalf("pull by digest through the failing /manifests/: %v", err)
			}
			if got != ocispec.MediaTypeImageIndex {
				t.Fatalf("stored as %s, want %s", got, ocispec.MediaTypeImageIndex)
			}
			if out := node.run(t, ref); out != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", out)
			}
		})
	}
	// The bytes containerd verified are the upstream's.
	if b := getBody(t, proxyURL+"/v2/"+repo+"/manifests/"+index.String()+"?ns=docker.io"); !bytes.Equal(b, getBody(t, registryURL+"/v2/"+repo+"/manifests/"+index.String())) {
		t.Fatal("regnorm's index differs from the upstream's")
	}
}
