//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerd is a daemon with its own root, state and sockets, whose CRI
// plugin reads hosts.toml files from its own config_path.
type containerd struct {
	socket     string
	configPath string
	proc       *process
}

// startContainerd starts a containerd whose docker.io mirror is mirrorURL,
// with capabilities pull and resolve, as the README tells operators. Each
// direct registry (host:port) is reached over plain HTTP with no mirror.
func startContainerd(t *testing.T, mirrorURL string, direct ...string) *containerd {
	t.Helper()
	return startContainerdBin(t, containerdBin, mirrorURL, direct...)
}

// startContainerdBin is startContainerd with another containerd binary.
func startContainerdBin(t *testing.T, bin, mirrorURL string, direct ...string) *containerd {
	t.Helper()
	// Short paths: unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "rn-ctd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &containerd{socket: filepath.Join(dir, "c.sock"), configPath: filepath.Join(dir, "certs.d")}
	hosts := fmt.Sprintf("server = \"https://registry-1.docker.io\"\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", mirrorURL)
	os.MkdirAll(filepath.Join(c.configPath, "docker.io"), 0o755)
	os.WriteFile(filepath.Join(c.configPath, "docker.io", "hosts.toml"), []byte(hosts), 0o644)
	for _, host := range direct {
		os.MkdirAll(filepath.Join(c.configPath, host), 0o755)
		toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)
		os.WriteFile(filepath.Join(c.configPath, host, "hosts.toml"), []byte(toml), 0o644)
	}

	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, c.socket+".ttrpc", c.configPath)
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	c.proc = start(t, "containerd "+filepath.Base(bin), bin, "--config", cfgPath)

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.images(t).ListImages(ctx, &runtime.ListImagesRequest{})
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd CRI did not come up: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *containerd) images(t *testing.T) runtime.ImageServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtime.NewImageServiceClient(conn)
}

// pull makes the call kubelet makes: CRI ImageService/PullImage.
func (c *containerd) pull(t *testing.T, ref string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resp, err := c.images(t).PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil {
		return "", err
	}
	return resp.ImageRef, nil
}

// repoDigest returns the manifest digest containerd recorded for ref.
func (c *containerd) repoDigest(t *testing.T, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.images(t).ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil || resp.Image == nil || len(resp.Image.RepoDigests) == 0 {
		t.Fatalf("image status %s: %v %v", ref, err, resp)
	}
	_, dgst, _ := strings.Cut(resp.Image.RepoDigests[0], "@")
	return dgst
}

// run runs the image with ctr and returns what it printed.
func (c *containerd) run(t *testing.T, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	out, err := run(t, ctx, ctrBin, "--address", c.socket, "--namespace", "k8s.io", "run", "--rm", ref, id)
	if err != nil {
		t.Fatalf("ctr run %s: %v\n%s", ref, err, out)
	}
	return strings.TrimSpace(out)
}
