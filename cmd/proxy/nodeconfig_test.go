package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/fleet"
)

func TestNodeConfigWritesAndRemovesItsOwnFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// An operator's own hosts.toml for quay.io must survive.
	os.MkdirAll(filepath.Join(dir, "quay.io"), 0o755)
	os.WriteFile(filepath.Join(dir, "quay.io", "hosts.toml"), []byte("server = \"https://quay.io\"\n"), 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// No containerd here: this machine's (if any) is never read or dialled.
	node := t.TempDir()
	go func() {
		done <- run(ctx, []string{"node-config", "--config-path", dir, "--mirror", "http://10.96.0.50:5000",
			"--containerd-config", filepath.Join(node, "config.toml"), "--containerd-socket", filepath.Join(node, "c.sock"), "--report=false",
			"docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"}, func(string) string { return "" }, io.Discard, io.Discard)
	}()
	path := filepath.Join(dir, "docker.io", "hosts.toml")
	var got []byte
	for i := 0; i < 200 && len(got) == 0; i++ {
		got, _ = os.ReadFile(path)
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{`server = "https://registry-1.docker.io"`, `[host."http://10.96.0.50:5000"]`, `capabilities = ["pull", "resolve"]`} {
		if !strings.Contains(string(got), want) {
			t.Fatalf("hosts.toml lacks %s:\n%s", want, got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io")); !os.IsNotExist(err) {
		t.Fatalf("docker.io config not removed: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quay.io", "hosts.toml")); string(b) != "server = \"https://quay.io\"\n" {
		t.Fatalf("the operator's quay.io file was touched: %q", b)
	}
}

func TestNodeConfigRejectsBadArguments(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"node-config", "--mirror", "ftp://x", "docker.io=https://a"},
		{"node-config", "--mirror", "http://x:5000", "../etc=https://a"},
		{"node-config", "--mirror", "http://x:5000"},
	} {
		if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestNodeConfigRefusesWhatTOMLCannotCarry: node-config writes its paths,
// URLs and token into TOML (hosts.toml, the drop-in, the advice's lines),
// so it takes --config-path and --containerd-config only as regnorm takes a
// node's directories (fleet.ValidDir: a clean absolute path, no ':',
// quote, backslash or control character: a "\r" in --config-path made the
// drop-in one that containerd 2.3.4 refuses), and no control character or
// invalid UTF-8 (which Go's %q writes as "\x01", "\xff": not TOML 1.0) in
// --mirror, the token or a REGISTRY=SERVER pair. Each is refused by name,
// before anything is written.
func TestNodeConfigRefusesWhatTOMLCannotCarry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		want string // in the error
		args []string
	}{
		{"--config-path", []string{"--config-path", dir + "/certs\r.d"}},
		{"--config-path", []string{"--config-path", dir + "/certs\x7f.d"}},
		{"--config-path", []string{"--config-path", dir + "/certs\x01.d"}},
		{"--config-path", []string{"--config-path", dir + "/certs:/etc/docker/certs.d"}},
		{"--containerd-config", []string{"--containerd-config", dir + "/config\r.toml"}},
		{"--containerd-config", []string{"--containerd-config", dir + "/it's.toml"}},
		{"--containerd-config", []string{"--containerd-config", dir + "/conf\x01ig.toml"}},
		{"--mirror", []string{"--mirror", "http://10.96.0.50:5000/\xff"}},
		{"--mirror-token-file", []string{"--mirror-token-file", secret("token-utf8", "secret\xff\n")}},
		{"--mirror-token-file", []string{"--mirror-token-file", secret("token-ctl", "sec\x01ret\n")}},
		{"docker.io=https://registry-1.docker.io/\xff", []string{"docker.io=https://registry-1.docker.io/\xff"}},
		{"docker.io=https://registry-1.docker.io\x01", []string{"docker.io=https://registry-1.docker.io\x01"}},
		{"dock\x01er.io", []string{"dock\x01er.io=https://registry-1.docker.io"}},
		{"\xff.io", []string{"\xff.io=https://registry-1.docker.io"}},
	} {
		args := []string{"node-config", "--once", "--report=false", "--config-path", filepath.Join(dir, "certs.d"), "--containerd-config", filepath.Join(dir, "config.toml"),
			"--containerd-socket", filepath.Join(dir, "none.sock"), "--mirror", "http://10.96.0.50:5000"}
		pairs := []string{"quay.io=https://quay.io"}
		if strings.Contains(tt.args[0], "=") {
			pairs = tt.args
		} else {
			args = append(args, tt.args...)
		}
		err := run(context.Background(), append(args, pairs...), env(nil), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(tt.want)) && !strings.Contains(err.Error(), "node-config: "+tt.want) {
			t.Errorf("%q: %v; want it refused, naming %q", tt.args, err, tt.want)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "certs.d")); len(entries) > 0 {
		t.Errorf("something was written: %v", entries)
	}
}

// TestNodeConfigOnceAndProbe: --once checks once and prints the node's
// state; with no containerd answering and a 1.x configuration without
// config_path, containerd does not read the files, and the probe on the
// status file says why and what to add.
func TestNodeConfigOnceAndProbe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("version = 2\n"), 0o644)
	status := filepath.Join(dir, "status.json")
	var out strings.Builder
	err := run(context.Background(), []string{"node-config", "--once", "--report=false", "--config-path", filepath.Join(dir, "certs.d"),
		"--containerd-config", cfg, "--containerd-socket", filepath.Join(dir, "none.sock"), "--status-file", status,
		"--mirror", "http://10.96.0.50:5000", "docker.io=https://registry-1.docker.io"}, func(string) string { return "" }, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"readsHostsToml": false`, "config_path is not set", `config_path = \"` + filepath.Join(dir, "certs.d")} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--once output lacks %s:\n%s", want, out.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "certs.d", "docker.io", "hosts.toml")); !os.IsNotExist(err) {
		t.Errorf("--once left its hosts.toml: %v", err)
	}

	os.WriteFile(status, []byte(`{"readsHostsToml": false, "reason": "config_path is not set", "fix": "config_path = \"/x\""}`), 0o644)
	err = run(context.Background(), []string{"node-config", "probe", "--status-file", status}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "config_path is not set") || !strings.Contains(err.Error(), `config_path = "/x"`) {
		t.Errorf("probe of a node that does not read the files: %v", err)
	}
	os.WriteFile(status, []byte(`{"readsHostsToml": true, "containerdVersion": "2.3.4", "hostsDir": "/x"}`), 0o644)
	if err := run(context.Background(), []string{"node-config", "probe", "--status-file", status}, func(string) string { return "" }, io.Discard, io.Discard); err != nil {
		t.Errorf("probe of a node that reads them: %v", err)
	}
	if err := run(context.Background(), []string{"node-config", "probe", "--status-file", filepath.Join(dir, "absent")}, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Error("probe without a status file passed")
	}
}

// TestNodeConfigReportsWithTheReportToken: regnorm configured with
// nodes.reportTokenFile, nodes.hostsDir and nodes.containerdConfigDir
// takes node-config's report sent with --report-token-file (not the client
// token of --mirror-token-file), and its fleet view tells the node to read
// nodes.hostsDir, and why, in words regnorm makes from node-config's codes:
// those of this release's node-config are all regnorm's to read, a drop-in
// under nodes.containerdConfigDir included. Without --report-token-file,
// node-config reports nothing.
func TestNodeConfigReportsWithTheReportToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hostsDir := filepath.Join(dir, "certs.d")
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	reportToken := write("report-token", "node-report-secret\n")
	write("tokens", "client-secret-0123456789\n")
	config := write("regnorm.yaml", "auth:\n  tokensFile: "+filepath.Join(dir, "tokens")+"\nnodes:\n  reportTokenFile: "+reportToken+"\n  hostsDir: "+hostsDir+"\n  containerdConfigDir: "+dir+"\n")
	containerdConfig := write("config.toml", "version = 2\n")
	// worker-2's configuration imports drop-ins, and node-config's own is
	// there, not yet loaded (containerd has not restarted since).
	withDropIns := write("config-2.toml", "version = 2\nimports = [\""+filepath.Join(dir, "conf.d", "*.toml")+"\"]\n")
	dropIn := filepath.Join(dir, "conf.d", "99-regnorm.toml")
	os.MkdirAll(filepath.Dir(dropIn), 0o755)
	write("conf.d/99-regnorm.toml", "# Written by regnorm node-config: config_path\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \""+hostsDir+"\"\n")
	addr := freeAddrs(t, 1)[0]
	runUntilDone(t, []string{"--config", config, "--listen", addr}, env(nil))
	base := "http://" + addr
	for i := 0; ; i++ {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 200 {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	nodeConfig := func(node, containerdConfig string, extra ...string) string {
		var log strings.Builder
		args := append([]string{"node-config", "--once", "--config-path", hostsDir, "--containerd-config", containerdConfig,
			"--containerd-socket", filepath.Join(dir, "none.sock"), "--mirror", base, "--node-name", node,
			"--mirror-token-file", filepath.Join(dir, "tokens")}, extra...)
		if err := run(context.Background(), append(args, "docker.io=https://registry-1.docker.io"), env(nil), io.Discard, &log); err != nil {
			t.Fatal(err)
		}
		return log.String()
	}
	if log := nodeConfig("without-token", containerdConfig); !strings.Contains(log, "--report-token-file") || strings.Contains(log, "sent this node's report") {
		t.Errorf("node-config without a report token does not say why it does not report:\n%s", log)
	}
	for node, containerdConfig := range map[string]string{"worker-1": containerdConfig, "worker-2": withDropIns} {
		log := nodeConfig(node, containerdConfig, "--report-token-file", reportToken, "--fix")
		if strings.Contains(log, "reporting to regnorm failed") {
			t.Fatalf("%s's report was refused:\n%s", node, log)
		}
		// --once's report stands for the node in the fleet view until the
		// DaemonSet's node-config reports again: it says it sent one.
		if !strings.Contains(log, "sent this node's report to regnorm") || !strings.Contains(log, "until") {
			t.Errorf("--once does not say it sent %s's report:\n%s", node, log)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/nodes", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var view struct {
		Nodes []fleet.NodeStatus `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
		t.Fatal(err)
	}
	want := "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + hostsDir + "\""
	byNode := map[string]fleet.NodeStatus{}
	for _, n := range view.Nodes {
		byNode[n.Node] = n
	}
	assumed := "containerd's version is unknown (its socket did not answer): assuming 1.7 from the configuration's version 2; "
	for node, why := range map[string]string{
		"worker-1": assumed + "config_path is not set: containerd 1.7 reads no hosts.toml; --fix cannot: the configuration imports no drop-in directory",
		"worker-2": assumed + "config_path is not set: containerd 1.7 reads no hosts.toml; --fix cannot: containerd's version is unknown (its socket did not answer): the drop-in depends on it; " +
			"a drop-in fixing it is written to \"" + dropIn + "\": restart containerd",
	} {
		n, ok := byNode[node]
		if !ok || n.NodeConfig == nil || !strings.HasSuffix(n.NodeConfig.Fix, want) || !strings.HasPrefix(n.NodeConfig.Reason, why) {
			t.Errorf("fleet view of %s: %+v\nwant told to add %q, because %q", node, n.NodeConfig, want, why)
		}
	}
	if len(view.Nodes) != 2 || byNode["worker-2"].NodeConfig == nil || byNode["worker-2"].NodeConfig.DropIn != dropIn {
		t.Fatalf("fleet view %+v, want worker-1 and worker-2, with its drop-in %s", view.Nodes, dropIn)
	}
}

// syncBuffer is a buffer a test reads while node-config writes its log.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNodeConfigOnceChangesNothing: beside a running node-config (the
// DaemonSet's), `--once` with the same flags, --fix and --status-file
// included, changes nothing on the node: the hosts.toml files, the status
// file and the drop-in directory are as before, on start and on exit. Its
// stdout is one JSON value (the log is on stderr): the node's state, with
// the time of the check. It says whether the files are in place, and what
// --fix would do.
func TestNodeConfigOnceChangesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hostsDir := filepath.Join(dir, "certs.d")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("version = 2\nimports = [\""+filepath.Join(dir, "conf.d", "*.toml")+"\"]\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	socket := startVersionServer(t, "1.6.20")
	args := []string{"node-config", "--config-path", hostsDir, "--containerd-config", cfg, "--containerd-socket", socket,
		"--status-file", filepath.Join(dir, "status.json"), "--fix", "--report=false", "--node-name", "worker-1",
		"--mirror", "http://10.96.0.50:5000", "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"}

	// The running node-config: a check, and then its hosts.toml files,
	// status file and drop-in are in place.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var daemonLog syncBuffer
	go func() { done <- run(ctx, args, env(nil), io.Discard, &daemonLog) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var before map[string]string
	for i := 0; ; i++ {
		before = snapshot(t, dir)
		if _, ok := before["status.json"]; ok && strings.Contains(daemonLog.String(), "wrote a containerd drop-in") {
			break
		}
		if i == 3000 {
			t.Fatalf("the running node-config did not check; files %v, log:\n%s", before, daemonLog.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Undo the drop-in, so that --once finds something --fix would do.
	os.Remove(filepath.Join(dir, "conf.d", "99-regnorm.toml"))
	before = snapshot(t, dir)

	stdout, stderr := &strings.Builder{}, &strings.Builder{}
	if err := run(context.Background(), slices.Insert(slices.Clone(args), 1, "--once"), env(nil), stdout, stderr); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, dir); !maps.Equal(before, after) {
		t.Errorf("--once changed the node:\nbefore %v\nafter  %v", before, after)
	}
	dec := json.NewDecoder(strings.NewReader(stdout.String()))
	var rep cache.NodeReport
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("stdout holds more than the JSON: %v\n%s", err, stdout)
	}
	if rep.Node != "worker-1" || rep.ContainerdVersion != "1.6.20" || rep.ReportedAt.IsZero() || strings.Contains(stdout.String(), "0001-01-01") {
		t.Errorf("--once's state: %+v", rep)
	}
	for _, want := range []string{"in place, as node-config writes it", filepath.Join(hostsDir, "quay.io", "hosts.toml"), "--fix would write a containerd drop-in"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("--once's log lacks %q:\n%s", want, stderr)
		}
	}
}

// snapshot is every file under dir, by path, with its content and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Type()&os.ModeSocket != 0 {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		fi, _ := d.Info()
		out[rel] = fmt.Sprintf("%v %s", fi.Mode(), b)
		return err
	})
	return out
}

// versionServer is containerd's version API, answering a fixed version.
type versionServer struct {
	versionapi.UnimplementedVersionServer
	version string
}

func (v versionServer) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: v.version}, nil
}

// startVersionServer answers containerd's version API on a socket of its
// own (what node-config asks a node's containerd), until the test ends.
func startVersionServer(t *testing.T, version string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rn-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "c.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	versionapi.RegisterVersionServer(srv, versionServer{version: version})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return socket
}

// TestNodeConfigPutsBackItsFiles: the running node-config puts back, at
// each check, a hosts.toml that was removed (as `--once` of an older
// release did, or a node-config stopping in a rollout), leaves one that is
// not regnorm's alone, and removes its own when it stops. (One that was
// changed it leaves alone: TestNodeConfigNeverFights.)
func TestNodeConfigPutsBackItsFiles(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		hostsDir := filepath.Join(dir, "certs.d")
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		var log syncBuffer
		go func() {
			done <- run(ctx, []string{"node-config", "--config-path", hostsDir, "--interval", "1m",
				"--containerd-config", filepath.Join(dir, "config.toml"), "--containerd-socket", filepath.Join(dir, "none.sock"), "--report=false",
				"--mirror", "http://10.96.0.50:5000", "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io", "ghcr.io=https://ghcr.io"}, env(nil), io.Discard, &log)
		}()
		synctest.Wait() // the first check is done: node-config waits for the next
		docker, quay, ghcr := filepath.Join(hostsDir, "docker.io", "hosts.toml"), filepath.Join(hostsDir, "quay.io", "hosts.toml"), filepath.Join(hostsDir, "ghcr.io", "hosts.toml")
		want, err := os.ReadFile(docker)
		if err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(filepath.Dir(docker))
		os.WriteFile(ghcr, []byte("server = \"https://ghcr.io\"\n"), 0o644) // the operator's own

		time.Sleep(time.Minute)
		synctest.Wait()
		if got, err := os.ReadFile(docker); err != nil || !bytes.Equal(got, want) {
			t.Errorf("the removed hosts.toml was not put back: %v\n%s", err, got)
		}
		if got, _ := os.ReadFile(ghcr); string(got) != "server = \"https://ghcr.io\"\n" {
			t.Errorf("the operator's file was replaced:\n%s", got)
		}
		if !strings.Contains(log.String(), "put back a file that was removed") || !strings.Contains(log.String(), "that regnorm did not write is in the way") {
			t.Errorf("the log does not say so:\n%s", log.String())
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{docker, quay} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s is left after node-config stopped: %v", p, err)
			}
		}
		if _, err := os.Stat(ghcr); err != nil {
			t.Errorf("the operator's file was removed: %v", err)
		}
	})
}

// TestNodeConfigNeverFights: two node-configs on one --config-path (two
// releases, with different --mirror) and an operator who edits a
// hosts.toml and keeps its marker line do not make node-config rewrite the
// file at every check (over 10 minutes it was put back 12 times): the one
// that starts last writes its files; a file that differs from what a
// node-config writes is left alone, with one warning for each change.
// What removes a file (--once of an older release, a node-config stopping,
// an operator) is still undone at the next check: when the second
// node-config stops and removes its file, the first writes its own.
func TestNodeConfigNeverFights(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		hostsDir := filepath.Join(dir, "certs.d")
		nodeConfig := func(mirror string, log *syncBuffer, pairs ...string) (stop func()) {
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, append([]string{"node-config", "--config-path", hostsDir, "--interval", "1m",
					"--containerd-config", filepath.Join(dir, "config.toml"), "--containerd-socket", filepath.Join(dir, "none.sock"), "--report=false",
					"--mirror", mirror}, pairs...), env(nil), io.Discard, log)
			}()
			synctest.Wait()
			return func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
				synctest.Wait()
			}
		}
		docker, quay := filepath.Join(hostsDir, "docker.io", "hosts.toml"), filepath.Join(hostsDir, "quay.io", "hosts.toml")
		var logA, logB syncBuffer
		stopA := nodeConfig("http://10.96.0.50:5000", &logA, "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io")
		fromA, _ := os.ReadFile(docker)
		stopB := nodeConfig("http://10.96.0.60:5000", &logB, "docker.io=https://registry-1.docker.io")
		fromB, _ := os.ReadFile(docker)
		if bytes.Equal(fromA, fromB) || !bytes.Contains(fromB, []byte("10.96.0.60")) {
			t.Fatalf("the second node-config did not write its file:\n%s", fromB)
		}
		b, _ := os.ReadFile(quay)
		edited := append(b, "# the team's own note\n"...)
		os.WriteFile(quay, edited, 0o644)

		for minute := 1; minute <= 10; minute++ {
			time.Sleep(time.Minute)
			synctest.Wait()
			if got, _ := os.ReadFile(docker); !bytes.Equal(got, fromB) {
				t.Fatalf("minute %d: docker.io's hosts.toml changed hands:\n%s", minute, got)
			}
			if got, _ := os.ReadFile(quay); !bytes.Equal(got, edited) {
				t.Fatalf("minute %d: the operator's edit was undone:\n%s", minute, got)
			}
		}
		for name, log := range map[string]string{"first": logA.String(), "second": logB.String()} {
			if strings.Contains(log, "put back") {
				t.Errorf("the %s node-config put a file back:\n%s", name, log)
			}
		}
		for _, p := range []string{docker, quay} {
			if n := strings.Count(logA.String(), "path="+p); n != 2 { // wrote, then one warning
				t.Errorf("the first node-config's log names %s %d times, want 2 (wrote, and one warning):\n%s", p, n, logA.String())
			}
		}
		if !strings.Contains(logA.String(), "left alone") {
			t.Errorf("the first node-config does not say it leaves the files alone:\n%s", logA.String())
		}

		// A file removed is put back at the next check; when the second
		// node-config stops (removing its own), the first writes its own.
		os.Remove(quay)
		stopB()
		if _, err := os.Stat(docker); !os.IsNotExist(err) {
			t.Fatalf("the second node-config left its file: %v", err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, _ := os.ReadFile(docker); !bytes.Equal(got, fromA) {
			t.Errorf("docker.io's hosts.toml, once the second node-config stopped:\n%s", got)
		}
		if got, err := os.ReadFile(quay); err != nil || bytes.Contains(got, []byte("the team's own note")) {
			t.Errorf("the removed quay.io hosts.toml was not put back: %v\n%s", err, got)
		}
		stopA()
		for _, p := range []string{docker, quay} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s is left after node-config stopped: %v", p, err)
			}
		}
	})
}

// TestNodeConfigSendsTheNodeName: with a node name, each hosts.toml has
// containerd send it to regnorm as the Regnorm-Node header (beside the
// client token's Authorization, in the one header table containerd
// reads); a name that is not a node's is refused; without one, no header.
func TestNodeConfigSendsTheNodeName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("client-\"secret\\-é0123456789\n"), 0o600) // what a TOML string must escape, and more
	hosts := func(extra ...string) (map[string]any, error) {
		hostsDir := t.TempDir()
		args := append([]string{"node-config", "--config-path", hostsDir, "--containerd-config", filepath.Join(dir, "config.toml"),
			"--containerd-socket", filepath.Join(dir, "none.sock"), "--report=false", "--mirror", "http://10.96.0.50:5000"}, extra...)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, append(args, "docker.io=https://registry-1.docker.io"), env(nil), io.Discard, io.Discard)
		}()
		var b []byte
		for i := 0; i < 500 && len(b) == 0; i++ {
			b, _ = os.ReadFile(filepath.Join(hostsDir, "docker.io", "hosts.toml"))
			select {
			case err := <-done:
				cancel()
				return nil, err
			case <-time.After(10 * time.Millisecond):
			}
		}
		cancel()
		if err := <-done; err != nil {
			return nil, err
		}
		doc, err := regtest.ContainerdTOML(b)
		if err != nil {
			t.Fatalf("hosts.toml: %v\n%s", err, b)
		}
		host, _ := doc["host"].(map[string]any)
		mirror, _ := host["http://10.96.0.50:5000"].(map[string]any)
		header, _ := mirror["header"].(map[string]any)
		return header, nil
	}
	header, err := hosts("--node-name", "worker-1.eu-west", "--mirror-token-file", tokens)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(header) != "map[Authorization:[Bearer client-\"secret\\-é0123456789] Regnorm-Node:[worker-1.eu-west]]" {
		t.Errorf("headers %v", header)
	}
	if header, err := hosts(); err != nil || header != nil {
		t.Errorf("without a node name: headers %v, %v", header, err)
	}
	for _, name := range []string{"Worker-1", "worker_1", `a"b`, "a\nb", "-a", strings.Repeat("a", 254)} {
		if _, err := hosts("--node-name", name); err == nil || !strings.Contains(err.Error(), "is not a node name") {
			t.Errorf("--node-name %q: %v", name, err)
		}
	}
}

// TestNodeConfigSaysWhatItDoes: without a node name --once says that no
// report is sent; the lines to add are in the log as lines, to be read and
// followed; once --fix wrote the drop-in, the probe says to restart
// containerd, not also to add the lines.
func TestNodeConfigSaysWhatItDoes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	token := filepath.Join(dir, "report-token")
	os.WriteFile(token, []byte("node-report-secret\n"), 0o600)
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("version = 3\nimports = [\""+filepath.Join(dir, "conf.d", "*.toml")+"\"]\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = ''\n"), 0o644)
	socket := startVersionServer(t, "v2.3.4")
	var stderr strings.Builder
	err := run(context.Background(), []string{"node-config", "--once", "--config-path", filepath.Join(dir, "certs.d"), "--containerd-config", cfg,
		"--containerd-socket", socket, "--report-token-file", token, "--mirror", "http://127.0.0.1:1", "docker.io=https://registry-1.docker.io"}, env(nil), io.Discard, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	fix := "In " + cfg + ", under [plugins.'io.containerd.cri.v1.images'.registry], change the line\n  config_path = ''\nto\n  config_path = '" + filepath.Join(dir, "certs.d") + "'\nThen restart containerd"
	for _, want := range []string{"not reporting to regnorm: no node name", `config_path is \"\" (empty), so containerd 2.3 uses its default`, "\n" + fix} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), `\n`) {
		t.Errorf("the log has a literal \\n:\n%s", stderr.String())
	}

	// --fix writes the drop-in; until containerd restarts, the probe says
	// to restart it, and no lines to add.
	status := filepath.Join(dir, "status.json")
	nc := &nodeConfig{configPath: filepath.Join(dir, "certs.d"), containerdConfig: cfg, socket: socket, statusFile: status, fix: true,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), stderr: io.Discard}
	if rep := nc.check(context.Background()); rep.DropIn == "" || rep.Fix != "" {
		t.Fatalf("after --fix: drop-in %q, fix %q", rep.DropIn, rep.Fix)
	}
	err = run(context.Background(), []string{"node-config", "probe", "--status-file", status}, env(nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "restart containerd to apply it") || strings.Contains(err.Error(), "config_path = ") || strings.Contains(err.Error(), "add to containerd") {
		t.Errorf("probe between the fix and the restart: %v", err)
	}
}

// TestNodeConfigLeavesTheOperatorsDirectoryAlone: a registry's directory
// whose hosts.toml is not node-config's is the operator's, and node-config
// writes and removes nothing in it: no CA (--mirror-ca-file) beside it at
// start or at any check, and an identical CA the operator put there stays
// when node-config stops, and is not put back when the operator removes
// it. (Before, the CA was written beside a foreign hosts.toml, put back at
// every check and removed on SIGTERM.) In node-config's own directory the
// CA keeps the hosts.toml rule: a changed CA is left alone, a removed one
// put back at the next check, and it is removed on SIGTERM.
func TestNodeConfigLeavesTheOperatorsDirectoryAlone(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		hostsDir := filepath.Join(dir, "certs.d")
		caPEM, _ := regtest.SelfSigned(t, "regnorm", "10.96.0.50")
		caFile := filepath.Join(dir, "ca.pem")
		os.WriteFile(caFile, caPEM, 0o644)
		operators := map[string][]byte{}
		for _, registry := range []string{"docker.io", "ghcr.io"} {
			p := filepath.Join(hostsDir, registry, "hosts.toml")
			os.MkdirAll(filepath.Dir(p), 0o755)
			operators[p] = []byte("server = \"https://" + registry + "\"\n")
			os.WriteFile(p, operators[p], 0o644)
		}
		dockerCA, ghcrCA, quayCA := filepath.Join(hostsDir, "docker.io", "regnorm-ca.crt"), filepath.Join(hostsDir, "ghcr.io", "regnorm-ca.crt"), filepath.Join(hostsDir, "quay.io", "regnorm-ca.crt")
		os.WriteFile(ghcrCA, caPEM, 0o644) // the operator's copy of regnorm's CA

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		var log syncBuffer
		go func() {
			done <- run(ctx, []string{"node-config", "--config-path", hostsDir, "--interval", "1m", "--mirror-ca-file", caFile,
				"--containerd-config", filepath.Join(dir, "config.toml"), "--containerd-socket", filepath.Join(dir, "none.sock"), "--report=false",
				"--mirror", "https://10.96.0.50:5000", "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io", "ghcr.io=https://ghcr.io"}, env(nil), io.Discard, &log)
		}()
		synctest.Wait()
		if fileExists(dockerCA) {
			t.Errorf("node-config wrote its CA beside the operator's hosts.toml")
		}
		if got, err := os.ReadFile(quayCA); err != nil || !bytes.Equal(got, caPEM) {
			t.Fatalf("node-config's own directory has no CA: %v", err)
		}

		// The operator removes the CA beside their hosts.toml, and changes
		// the one in node-config's directory.
		os.Remove(ghcrCA)
		os.WriteFile(quayCA, []byte("the team's CA\n"), 0o644)
		for minute := 1; minute <= 3; minute++ {
			time.Sleep(time.Minute)
			synctest.Wait()
			if fileExists(dockerCA) || fileExists(ghcrCA) {
				t.Fatalf("minute %d: a CA was written beside the operator's hosts.toml", minute)
			}
			if got, _ := os.ReadFile(quayCA); string(got) != "the team's CA\n" {
				t.Fatalf("minute %d: the changed CA was written back:\n%s", minute, got)
			}
		}
		os.Remove(quayCA)
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, err := os.ReadFile(quayCA); err != nil || !bytes.Equal(got, caPEM) {
			t.Errorf("the removed CA was not put back: %v", err)
		}

		os.WriteFile(ghcrCA, caPEM, 0o644) // the operator's again
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(ghcrCA); err != nil || !bytes.Equal(got, caPEM) {
			t.Errorf("the CA beside the operator's hosts.toml was removed on stop: %v", err)
		}
		for p, want := range operators {
			if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
				t.Errorf("the operator's %s changed:\n%s", p, got)
			}
		}
		if fileExists(quayCA) || fileExists(filepath.Join(hostsDir, "quay.io", "hosts.toml")) {
			t.Errorf("node-config's own files are left after it stopped")
		}
	})
}

// TestNodeConfigRepairsAnEmptyHostsToml: an empty hosts.toml (what a
// crash between creating and writing a file could leave; containerd then
// skips the mirror) is node-config's to write, at start and at each check:
// it has no marker, and was taken for the operator's and never repaired.
func TestNodeConfigRepairsAnEmptyHostsToml(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		hostsDir := filepath.Join(dir, "certs.d")
		docker, quay := filepath.Join(hostsDir, "docker.io", "hosts.toml"), filepath.Join(hostsDir, "quay.io", "hosts.toml")
		os.MkdirAll(filepath.Dir(docker), 0o755)
		os.WriteFile(docker, nil, 0o644)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		var log syncBuffer
		go func() {
			done <- run(ctx, []string{"node-config", "--config-path", hostsDir, "--interval", "1m",
				"--containerd-config", filepath.Join(dir, "config.toml"), "--containerd-socket", filepath.Join(dir, "none.sock"), "--report=false",
				"--mirror", "http://10.96.0.50:5000", "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"}, env(nil), io.Discard, &log)
		}()
		synctest.Wait()
		if got, _ := os.ReadFile(docker); !bytes.HasPrefix(got, []byte(nodeConfigMarker)) {
			t.Fatalf("the empty hosts.toml was not written at start:\n%s\n%s", got, log.String())
		}
		os.WriteFile(quay, nil, 0o644)
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, _ := os.ReadFile(quay); !bytes.HasPrefix(got, []byte(nodeConfigMarker)) {
			t.Errorf("the hosts.toml left empty was not put back:\n%s\n%s", got, log.String())
		}
		if strings.Contains(log.String(), "did not write") {
			t.Errorf("an empty hosts.toml was taken for the operator's:\n%s", log.String())
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestWriteFileAtomic: writers of one file at once (two node-configs on
// one directory, or a node-config and its --once) each write through a
// temporary file of their own: none fails, the file is always one
// writer's whole content, with the mode asked for, and no temporary file
// is left. (With one temporary path for all, a writer renamed another's
// file away, or one half written.)
func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "docker.io", "hosts.toml")
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	contents := map[string]bool{}
	for w := range 8 {
		contents[strings.Repeat(fmt.Sprintf("writer %d\n", w), 2000)] = true
	}
	for content := range contents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := writeFileAtomic(path, []byte(content), 0o640); err != nil {
					errs <- err
				}
				if b, err := os.ReadFile(path); err != nil || !contents[string(b)] {
					errs <- fmt.Errorf("read %d bytes, not one writer's whole content: %v", len(b), err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 3 {
			t.Error(err)
		}
	}
	if n > 3 {
		t.Errorf("and %d more errors", n-3)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640: %v", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files left beside it: %v", names)
	}
}
