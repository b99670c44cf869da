package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", config, "--listen", addr, "--data-dir", t.TempDir()}, env(nil), io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
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
		if err := run(ctx, append(args, "docker.io=https://registry-1.docker.io"), env(nil), io.Discard, &log); err != nil {
			t.Fatal(err)
		}
		return log.String()
	}
	if log := nodeConfig("without-token", containerdConfig); !strings.Contains(log, "--report-token-file") {
		t.Errorf("node-config without a report token does not say why it does not report:\n%s", log)
	}
	for node, containerdConfig := range map[string]string{"worker-1": containerdConfig, "worker-2": withDropIns} {
		if log := nodeConfig(node, containerdConfig, "--report-token-file", reportToken, "--fix"); strings.Contains(log, "reporting to regnorm failed") {
			t.Fatalf("%s's report was refused:\n%s", node, log)
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
		if !ok || n.NodeConfig == nil || n.NodeConfig.Fix != want || !strings.HasPrefix(n.NodeConfig.Reason, why) {
			t.Errorf("fleet view of %s: %+v\nwant told to add %q, because %q", node, n.NodeConfig, want, why)
		}
	}
	if len(view.Nodes) != 2 || byNode["worker-2"].NodeConfig == nil || byNode["worker-2"].NodeConfig.DropIn != dropIn {
		t.Fatalf("fleet view %+v, want worker-1 and worker-2, with its drop-in %s", view.Nodes, dropIn)
	}
}
