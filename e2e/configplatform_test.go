//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestConfigPlatformUnlikeItsEntry: an index whose linux/amd64 entry names
// a manifest whose config says linux/arm64 (built on an arm64 machine by a
// Dockerfile whose last stage is FROM --platform=$BUILDPLATFORM; the
// binaries are amd64's). containerd 1.7.16's unpacker refuses it where the
// pull asked for a platform: its transfer service (`ctr pull
// --local=false`) fails with "unpacker does not support platform
// linux/arm64". Its CRI pull does not ask (the client's Pull unpacks for
// every platform unless CheckPlatformSupported is set, which the CRI never
// sets): the kubelet's path pulls and runs the image straight from the
// registry and through regnorm, which serves it as upstream has it. A
// single manifest whose config says arm64 behaves the same. The transfer
// service of 1.7 reads no hosts.toml: it never reaches a mirror.
func TestConfigPlatformUnlikeItsEntry(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	// Both configs say arm64, as the builder was.
	amd64 := pushHello(t, registryURL, "buildx/app", "amd64", regtest.ImageOptions{Architecture: "arm64"})
	arm64 := pushHello(t, registryURL, "buildx/app", "arm64", regtest.ImageOptions{Architecture: "arm64", LayerMediaType: ocispec.MediaTypeImageLayerGzip})
	index := pushIndexSized(t, registryURL, "buildx/app", "v1", amd64, arm64, 0)
	proxyURL, _ := startRegnorm(t, registryURL, "")
	// The transfer service of 1.7 reaches a registry over HTTPS only, with
	// the system's roots: a TLS registry in front of the same images, its
	// certificate in the daemon's SSL_CERT_FILE.
	cert, key, ca := writeCert(t, t.TempDir())
	tlsHost := startRegistryTLS(t, registryURL, cert, key)
	amd64Config := digest.FromBytes(amd64.Config)

	for _, tc := range []struct {
		name, tag string
		original  digest.Digest
	}{
		{"index", "v1", index},
		{"manifest", "amd64", amd64.ManifestDigest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The transfer service asks its unpacker for linux/amd64.
			node := startContainerdVersion(t, containerd1716, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost},
				Env: []string{"SSL_CERT_FILE=" + ca}})
			// (1.7.16 prints the platform as a Go struct.)
			wantErr := fmt.Sprintf("unpacker does not support platform {arm64 linux  [] } for image %s", amd64Config)
			out, err := node.ctrPull(t, tlsHost+"/buildx/app:"+tc.tag)
			if err == nil || !strings.Contains(out, wantErr) {
				t.Fatalf("transfer service pull: %v, want %q:\n%s", err, wantErr, out)
			}
			t.Logf("containerd 1.7.16, transfer service, straight from the registry: %s", lastLine(out))

			// CRI, straight from the registry.
			direct := registryHost + "/buildx/app:" + tc.tag
			if _, err := node.pull(t, direct); err != nil {
				t.Fatalf("CRI pull straight from the registry: %v", err)
			}
			if got := node.run(t, direct); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			t.Logf("containerd 1.7.16, CRI, straight from the registry: pulled and ran %s", node.repoDigest(t, direct))

			// CRI through regnorm, on a node with nothing cached: the
			// upstream's bytes.
			mirrored := startContainerdVersion(t, containerd1716, containerdOptions{Mirror: proxyURL})
			ref := "docker.io/buildx/app:" + tc.tag
			if _, err := mirrored.pull(t, ref); err != nil {
				t.Fatalf("CRI pull through regnorm: %v", err)
			}
			if got := mirrored.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if got := mirrored.repoDigest(t, ref); got != tc.original.String() {
				t.Fatalf("through regnorm: %s, want the upstream's %s", got, tc.original)
			}
			t.Logf("containerd 1.7.16, CRI, through regnorm: pulled and ran %s, the upstream's", tc.original)
		})
	}
}

// ctrPull pulls ref with the node's ctr through containerd's transfer
// service (1.7: --local=false), in a namespace of its own, and returns what
// ctr printed.
func (c *containerd) ctrPull(t *testing.T, ref string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, c.kind.ctr, "--address", c.socket, "--namespace", "transfer", "images", "pull", "--local=false", ref)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// startRegistryTLS runs the distribution registry on 127.0.0.1 over TLS
// with cert and key, as a pull-through cache of remote, and returns its
// host:port.
func startRegistryTLS(t *testing.T, remote, cert, key string) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	path := registryConfig(t, dir, addr, remote, cert, key)
	start(t, "registry (TLS)", registryBin, "serve", path)
	waitTLS(t, addr)
	return addr
}
