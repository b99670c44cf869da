//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerd2Dir holds containerd v2.3.4's containerd, containerd-shim-runc-v2
// and ctr, built by scripts/test-deps.sh.
var containerd2Dir = os.Getenv("REGNORM_CONTAINERD2_DIR")

// containerd17Dir holds containerd v1.7.16's containerd and ctr, built by
// scripts/test-deps.sh.
var containerd17Dir = os.Getenv("REGNORM_CONTAINERD17_DIR")

// containerdKind is a containerd build the tests can start.
type containerdKind struct {
	// name is the version, for test names and messages.
	name string
	// major is the major version: 2.x pulls over CRI through the transfer
	// service, 1.x with the client's (local) pull.
	major int
	// bin is the daemon and ctr the client that runs containers on it.
	bin, ctr string
	// shimDir, when set, is put first on the daemon's PATH: containerd looks
	// its runc shim up there, and a 2.x daemon fails with Debian's 1.6 shim.
	shimDir string
	// configVersion is the config.toml schema: 2 names the CRI plugin
	// io.containerd.grpc.v1.cri, 3 splits it into io.containerd.cri.v1.*.
	configVersion int
}

// The containerd builds the tests run.
var (
	// containerd1620 is Debian 12's containerd, which pulls over CRI with the
	// local (client) pull path.
	containerd1620 = containerdKind{name: "1.6.20", major: 1, bin: containerdBin, ctr: ctrBin, configVersion: 2}
	// containerd168 is the last containerd that aborts on xattrs on symlinks.
	containerd168 = containerdKind{name: "1.6.8", major: 1, bin: oldContainerdBin, ctr: ctrBin, configVersion: 2}
	// containerd1716 is the last 1.7 whose unpacker refuses an image whose
	// config names a platform it was not asked to unpack (1.7.17 fetches
	// it instead). Its own ctr: Debian's (1.6) has no transfer service
	// client. Debian's runc shim runs its containers, as it does 1.6.8's.
	containerd1716 = containerdKind{name: "1.7.16", major: 1, bin: filepath.Join(containerd17Dir, "containerd"),
		ctr: filepath.Join(containerd17Dir, "ctr"), configVersion: 2}
	// containerd234 pulls over CRI through the transfer service, reads
	// config_path as one directory there, and can fetch a blob in ranges.
	containerd234 = containerdKind{name: "2.3.4", major: 2, bin: filepath.Join(containerd2Dir, "containerd"),
		ctr: filepath.Join(containerd2Dir, "ctr"), shimDir: containerd2Dir, configVersion: 3}
)

// containerdOptions configure a node started by startContainerdVersion.
type containerdOptions struct {
	// Mirror, when Hosts is nil, is written as the docker.io mirror with
	// capabilities pull and resolve, as the README tells operators.
	Mirror string
	// Direct, when Hosts is nil, are registries (host:port) reached over
	// plain HTTP with no mirror.
	Direct []string
	// Hosts are the hosts.toml files of the node's hosts directory, by
	// registry host ("docker.io", "127.0.0.1:5000"); see mirrorHosts and
	// directHosts. Nil means those of Mirror and Direct.
	Hosts map[string]string
	// ConfigPath is the CRI registry config_path. Empty means the node's
	// hosts directory; hostsDirToken in it stands for that directory, so
	// hostsDirToken+":/etc/docker/certs.d" is a list that begins with it.
	ConfigPath string
	// OmitConfigPath leaves config_path out of the config: containerd's own
	// default applies (2.2+: /etc/containerd/certs.d:/etc/docker/certs.d;
	// 1.x: no hosts.toml at all).
	OmitConfigPath bool
	// ImportDropIns makes config.toml import confDir/*.toml, as
	// distributions' configurations do; DropIns (which imply it) are files
	// written there, by name.
	ImportDropIns bool
	DropIns       map[string]string
	// Config is appended to config.toml: tables of other plugins, e.g.
	// [plugins.'io.containerd.transfer.v1.local'] on a 2.x node. On 2.x it
	// may also define [plugins.'io.containerd.cri.v1.images'] (the config
	// only defines its registry subtable); on 1.x the CRI tables are taken.
	Config string
	// Env are more variables of the daemon's environment (NAME=value), e.g.
	// SSL_CERT_FILE for a registry it reaches with no hosts.toml.
	Env []string
}

// hostsDirToken stands for the node's hosts directory in
// containerdOptions.ConfigPath.
const hostsDirToken = "{hosts}"

// mirrorHosts is a hosts.toml for a registry whose pulls go to mirrorURL
// first, then to server.
func mirrorHosts(server, mirrorURL string) string {
	return fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, mirrorURL)
}

// directHosts is a hosts.toml for a registry at host:port served over HTTP.
func directHosts(host string) string {
	return fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)
}

// containerd is a daemon with its own root, state and sockets, whose CRI
// plugin reads hosts.toml files from its own hosts directory.
type containerd struct {
	kind   containerdKind
	socket string
	// hostsDir is the node's hosts directory (config_path by default).
	hostsDir string
	// configFile is its config.toml; confDir the drop-in directory
	// opts.ImportDropIns makes it import.
	configFile, confDir string
	path                string   // the daemon's PATH
	env                 []string // and the rest of its environment
	proc                *process
}

// startContainerd starts Debian's containerd (1.6.20) whose docker.io mirror
// is mirrorURL. Each direct registry (host:port) is reached over plain HTTP
// with no mirror.
func startContainerd(t *testing.T, mirrorURL string, direct ...string) *containerd {
	t.Helper()
	return startContainerdVersion(t, containerd1620, containerdOptions{Mirror: mirrorURL, Direct: direct})
}

// startContainerdBin is startContainerd with another containerd 1.x binary.
func startContainerdBin(t *testing.T, bin, mirrorURL string, direct ...string) *containerd {
	t.Helper()
	kind := containerd1620
	kind.name, kind.bin = filepath.Base(bin), bin
	return startContainerdVersion(t, kind, containerdOptions{Mirror: mirrorURL, Direct: direct})
}

// startContainerdVersion starts a containerd of kind with its own root,
// state and sockets, writes opts.Hosts (or the hosts of opts.Mirror and
// opts.Direct) into its hosts directory, and returns once CRI answers. The
// daemon is stopped when the test ends.
func startContainerdVersion(t *testing.T, kind containerdKind, opts containerdOptions) *containerd {
	t.Helper()
	for _, bin := range []string{kind.bin, kind.ctr} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("containerd %s: %v; run scripts/test.sh, which builds it (REGNORM_CONTAINERD2_DIR for 2.x)", kind.name, err)
		}
	}
	// Short paths: unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "rn-ctd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &containerd{kind: kind, socket: filepath.Join(dir, "c.sock"), hostsDir: filepath.Join(dir, "certs.d"),
		configFile: filepath.Join(dir, "config.toml"), confDir: filepath.Join(dir, "conf.d")}

	hosts := opts.Hosts
	if hosts == nil {
		hosts = map[string]string{}
		if opts.Mirror != "" {
			hosts["docker.io"] = mirrorHosts("https://registry-1.docker.io", opts.Mirror)
		}
		for _, host := range opts.Direct {
			hosts[host] = directHosts(host)
		}
	}
	for host, toml := range hosts {
		if err := os.MkdirAll(filepath.Join(c.hostsDir, host), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.hostsDir, host, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	configPath := strings.ReplaceAll(opts.ConfigPath, hostsDirToken, c.hostsDir)
	switch {
	case opts.OmitConfigPath:
		configPath = ""
	case configPath == "":
		configPath = c.hostsDir
	}

	cfg := containerdConfig(kind.configVersion, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, configPath)
	if opts.ImportDropIns || opts.DropIns != nil {
		// Top-level keys go before the first table.
		cfg = fmt.Sprintf("imports = [%q]\n", filepath.Join(c.confDir, "*.toml")) + cfg
		if err := os.MkdirAll(c.confDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range opts.DropIns {
			if err := os.WriteFile(filepath.Join(c.confDir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg += opts.Config
	if err := os.WriteFile(c.configFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// env execs the daemon in place (same PID, which start stops): it sets
	// the PATH the daemon looks its shim up on.
	c.path = os.Getenv("PATH")
	if kind.shimDir != "" {
		c.path = kind.shimDir + string(os.PathListSeparator) + c.path
	}
	c.env = opts.Env
	c.startDaemon(t)
	return c
}

// startDaemon starts the daemon on its configuration and returns once CRI
// answers.
func (c *containerd) startDaemon(t *testing.T) {
	t.Helper()
	args := append(append([]string{"PATH=" + c.path}, c.env...), c.kind.bin, "--config", c.configFile)
	c.proc = start(t, "containerd "+c.kind.name, "/usr/bin/env", args...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.images(t).ListImages(ctx, &runtime.ListImagesRequest{})
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd %s CRI did not come up: %v", c.kind.name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// restart stops the daemon and starts it again, as an operator's
// `systemctl restart containerd` does: it reads its configuration anew.
func (c *containerd) restart(t *testing.T) {
	t.Helper()
	c.proc.stop()
	c.startDaemon(t)
}

// containerdConfig is a config.toml of the given schema version with the
// overlayfs snapshotter for CRI, and the CRI registry config_path unless it
// is empty.
func containerdConfig(version int, root, state, socket, configPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = %d\nroot = %q\nstate = %q\n", version, root, state)
	switch version {
	case 2:
		b.WriteString(`disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]` + "\n")
	default:
		// NRI would listen on /var/run/nri/nri.sock, shared by every daemon.
		b.WriteString(`disabled_plugins = ["io.containerd.nri.v1.nri"]` + "\n")
	}
	fmt.Fprintf(&b, "\n[grpc]\n  address = %q\n\n[ttrpc]\n  address = %q\n", socket, socket+".ttrpc")
	switch version {
	case 2:
		b.WriteString("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n")
		if configPath != "" {
			fmt.Fprintf(&b, "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n", configPath)
		}
	default:
		// CRI's snapshotter is overlayfs by default. No table
		// [plugins.'io.containerd.cri.v1.images'] here: a caller's Config
		// may define it (use_local_image_pull, ...).
		if configPath != "" {
			fmt.Fprintf(&b, "\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = %q\n", configPath)
		}
	}
	return b.String()
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

// repoDigest returns the manifest digest containerd recorded for ref's
// repository. CRI lists the repo digests of every reference to the same
// image ID (config digest), e.g. an earlier pull from another registry.
func (c *containerd) repoDigest(t *testing.T, ref string) string {
	t.Helper()
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.images(t).ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil || resp.Image == nil {
		t.Fatalf("image status %s: %v %v", ref, err, resp)
	}
	for _, rd := range resp.Image.RepoDigests {
		if name, dgst, _ := strings.Cut(rd, "@"); name == named.Name() {
			return dgst
		}
	}
	t.Fatalf("image status %s: no repo digest for %s in %v", ref, named.Name(), resp.Image.RepoDigests)
	return ""
}

// run runs the image with the node's ctr and returns what it printed.
func (c *containerd) run(t *testing.T, ref string) string {
	t.Helper()
	out, err := c.tryRun(t, ref)
	if err != nil {
		t.Fatalf("ctr run %s on containerd %s: %v\n%s", ref, c.kind.name, err, out)
	}
	return out
}

// tryRun is run, returning ctr's error instead of failing the test: what
// the container printed, or on error everything ctr printed. ctr sometimes
// loses the output of a container that exits at once (containerd#770: seen
// here on 1.6.8 under load, exit 0 and nothing printed): such a run is
// tried again, at most twice, and the test log says so.
func (c *containerd) tryRun(t *testing.T, ref string) (string, error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		out, err := c.runOnce(t, ref)
		if err != nil || out != "" || attempt == 3 {
			return out, err
		}
		t.Logf("ctr run %s on containerd %s printed nothing (exit 0): running it again", ref, c.kind.name)
	}
}

func (c *containerd) runOnce(t *testing.T, ref string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	// ctr 2.x warns on stderr (cgroup v1 is deprecated): keep it apart from
	// the container's output.
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, c.kind.ctr, "--address", c.socket, "--namespace", "k8s.io", "run", "--rm", ref, id)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String() + stderr.String()), err
	}
	return strings.TrimSpace(stdout.String()), nil
}
