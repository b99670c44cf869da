//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/fleet"
)

// TestNodeConfigKnowsWhetherContainerdReadsIt runs `regnorm node-config`
// against real containerd 1.6.20 and v2.3.4 daemons with each kind of
// configuration. For each it checks the verdict node-config gives (status
// file, readiness probe, report in regnorm's fleet view), then proves it
// with a pull over CRI of an image regnorm fixes (an octet-stream config):
// where node-config says containerd reads the hosts.toml files, the pull
// goes through regnorm and the image runs, and only then is the node "uses
// the mirror"; where it says not, regnorm gets no request and the pull
// fails as with no mirror. A drop-in that sets another CRI key hides
// config_path on 1.6.20 (it replaces the section) and not on 2.3.4 (it
// merges); an old version 2 drop-in is migrated on 2.3.4, and its list
// wins. --fix fixes a 2.3.4 node with a drop-in and a restart of
// containerd, and a node-config started afterwards (a rollout) finds it
// applied; it refuses on a 1.6.20 node whose CRI section a drop-in would
// freeze. When node-config stops, its hosts.toml files are gone.
func TestNodeConfigKnowsWhetherContainerdReadsIt(t *testing.T) {
	registryURL, _ := startRegistry(t)
	legacy := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	// The image is pulled by its registry's own name: a node that misses
	// the mirror pulls straight from it (never from Docker Hub).
	upstreamHost := strings.TrimPrefix(registryURL, "http://")
	ref := upstreamHost + "/library/legacy:v1"
	list := hostsDirToken + ":/etc/docker/certs.d"

	for _, tt := range []struct {
		name string
		kind containerdKind
		opts containerdOptions
		// fix runs node-config with --fix; fixes says it writes a drop-in.
		fix, fixes bool
		// reads is node-config's verdict (after the fix and a restart, with
		// fixes); reason is in it while containerd does not read the files.
		reads  bool
		reason string
	}{
		{name: "1.6.20, config_path the directory", kind: containerd1620, reads: true},
		{name: "1.6.20, no config_path", kind: containerd1620, opts: containerdOptions{OmitConfigPath: true},
			reason: "config_path is not set: containerd 1.6 reads no hosts.toml"},
		{name: "1.6.20, legacy mirrors", kind: containerd1620, opts: containerdOptions{OmitConfigPath: true,
			Config: "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"" + upstreamHost + "\"]\n  endpoint = [\"" + registryURL + "\"]\n"},
			reason: "legacy registry.mirrors"},
		{name: "1.6.20, a drop-in replacing the CRI section", kind: containerd1620,
			opts:   containerdOptions{DropIns: map[string]string{"50-selinux.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  enable_selinux = false\n"}},
			reason: "config_path is not set"},
		{name: "1.6.20, no config_path, --fix refuses to freeze the CRI section", kind: containerd1620, fix: true,
			opts: containerdOptions{OmitConfigPath: true, ImportDropIns: true}, reason: "--fix cannot: containerd 1.6 replaces"},
		{name: "2.3.4, config_path the directory", kind: containerd234, reads: true},
		{name: "2.3.4, config_path a list", kind: containerd234, opts: containerdOptions{ConfigPath: list},
			reason: "transfer service, which reads it as one directory"},
		{name: "2.3.4, no config_path", kind: containerd234, opts: containerdOptions{OmitConfigPath: true},
			reason: "config_path is not set, so containerd 2.3 uses its default, the list"},
		{name: "2.3.4, a list on the local pull path", kind: containerd234, reads: true, opts: containerdOptions{ConfigPath: list,
			Config: "\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n"}},
		{name: "2.3.4, a drop-in setting another CRI key", kind: containerd234, reads: true,
			opts: containerdOptions{DropIns: map[string]string{"50-snapshotter.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"overlayfs\"\n"}}},
		{name: "2.3.4, an old version 2 drop-in with a list", kind: containerd234,
			opts:   containerdOptions{DropIns: map[string]string{"50-old.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"}},
			reason: "is the list"},
		{name: "2.3.4, config_path a list, fixed by a drop-in", kind: containerd234, fix: true, fixes: true, reads: true,
			opts: containerdOptions{ConfigPath: list, ImportDropIns: true}, reason: "transfer service"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Hosts = map[string]string{} // node-config writes them
			node := startContainerdVersion(t, tt.kind, tt.opts)
			// A regnorm of its own: every node here pulls from 127.0.0.1.
			// It takes node-config's reports with the report token, about
			// the node's hosts directory, with the drop-in in the node's
			// containerd configuration directory.
			reportToken := filepath.Join(t.TempDir(), "report-token")
			if err := os.WriteFile(reportToken, []byte("e2e-node-report-token\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			mirror := startRegnormForWith(t, upstreamHost, registryURL,
				fmt.Sprintf("nodes:\n  reportTokenFile: %s\n  hostsDir: %s\n  containerdConfigDir: %s\n", reportToken, node.hostsDir, filepath.Dir(node.configFile)))
			status := filepath.Join(t.TempDir(), "status.json")
			args := []string{"node-config", "--interval=1s", "--config-path=" + node.hostsDir, "--mirror=" + mirror,
				"--containerd-config=" + node.configFile, "--containerd-socket=" + node.socket, "--status-file=" + status,
				"--node-name=node-" + tt.kind.name, "--node-address=127.0.0.1", "--report-token-file=" + reportToken}
			if tt.fix {
				args = append(args, "--fix")
			}
			nc := start(t, "node-config", regnormBin, append(args, upstreamHost+"="+registryURL)...)
			hosts := filepath.Join(node.hostsDir, upstreamHost, "hosts.toml")

			// The first check is done once the status has containerd's
			// version.
			want := tt.reads && !tt.fixes
			rep := waitNodeStatus(t, status, func(r cache.NodeReport) bool { return r.ContainerdVersion != "" })
			if rep.ReadsHostsToml != want {
				t.Errorf("node-config says containerd reads the files: %v, want %v (%s)", rep.ReadsHostsToml, want, rep.Reason)
			}
			if !strings.Contains(rep.ContainerdVersion, tt.kind.name) {
				t.Errorf("containerd version %q, want %s", rep.ContainerdVersion, tt.kind.name)
			}
			// Once --fix wrote the drop-in, what is left is the restart:
			// no lines to add.
			if !want && (!strings.Contains(rep.Reason, tt.reason) || (rep.Fix == "") != tt.fixes) {
				t.Errorf("reason %q, fix %q; want %q, and the lines to add unless --fix wrote the drop-in", rep.Reason, rep.Fix, tt.reason)
			}
			checkProbe(t, status, want)
			// The fleet view says why in regnorm's words, made from
			// node-config's codes: the same as node-config's.
			n := checkFleet(t, mirror, "node-"+tt.kind.name, map[bool]string{true: "no pull seen yet", false: "does not use the mirror"}[want])
			if !want && (n.NodeConfig == nil || !strings.Contains(n.NodeConfig.Reason, tt.reason) || n.NodeConfig.Fix == "") {
				t.Errorf("the fleet view's report %+v; want the reason %q and the lines to add", n.NodeConfig, tt.reason)
			}
			if tt.fixes && (n.NodeConfig == nil || n.NodeConfig.DropIn != filepath.Join(node.confDir, "99-regnorm.toml") || !strings.Contains(n.NodeConfig.Reason, "restart containerd")) {
				t.Errorf("the fleet view's report %+v; want the drop-in written, and a restart", n.NodeConfig)
			}

			dropIn := filepath.Join(node.confDir, "99-regnorm.toml")
			if tt.fix && !tt.fixes {
				if rep.DropIn != "" || fileExists(dropIn) {
					t.Fatalf("--fix wrote a drop-in where it should refuse: %q", rep.DropIn)
				}
			}
			if tt.fixes {
				// The drop-in is written, and does not count until
				// containerd is restarted.
				if rep.DropIn != dropIn || !strings.Contains(rep.Reason, "restart containerd") {
					t.Fatalf("before the restart: drop-in %q, reason %q; want %s and a restart", rep.DropIn, rep.Reason, dropIn)
				}
				if _, err := os.Stat(dropIn); err != nil {
					t.Fatal(err)
				}
				node.restart(t)
				rep = waitNodeStatus(t, status, func(r cache.NodeReport) bool { return r.ReadsHostsToml })
				checkProbe(t, status, true)
				checkFleet(t, mirror, "node-"+tt.kind.name, "no pull seen yet")
			}

			// The pull proves the verdict.
			if tt.reads {
				if _, err := node.pull(t, ref); err != nil {
					t.Fatalf("pull through regnorm: %v", err)
				}
				if got := node.run(t, ref); got != "hello from regnorm e2e" {
					t.Fatalf("container printed %q", got)
				}
				n := checkFleet(t, mirror, "node-"+tt.kind.name, "uses the mirror")
				if n.Pulls == 0 || !strings.Contains(n.ContainerdVersion, tt.kind.name) {
					t.Errorf("fleet view after the pull: %+v", n)
				}
			} else {
				octetStreamFails(t, node, ref, legacy)
				if got := metric(t, mirror, "regnorm_http_requests_total", `route="manifest"`); got != 0 {
					t.Fatalf("node-config said containerd does not read the files, but regnorm got %v manifest requests", got)
				}
				checkFleet(t, mirror, "node-"+tt.kind.name, "does not use the mirror")
			}

			// Stopped, node-config removes its hosts.toml files; the drop-in
			// stays, and the next node-config (a rollout) finds it applied.
			nc.stop()
			if fileExists(hosts) {
				t.Errorf("%s is left after node-config stopped", hosts)
			}
			if tt.fixes {
				before, err := os.Stat(dropIn)
				if err != nil {
					t.Fatalf("the drop-in is gone after node-config stopped: %v", err)
				}
				next := filepath.Join(t.TempDir(), "status.json")
				args[slices.Index(args, "--status-file="+status)] = "--status-file=" + next
				start(t, "node-config again", regnormBin, append(args, upstreamHost+"="+registryURL)...)
				rep := waitNodeStatus(t, next, func(r cache.NodeReport) bool { return r.ContainerdVersion != "" })
				if !rep.ReadsHostsToml || rep.DropIn != dropIn {
					t.Errorf("a new node-config after the restart: %+v; want the drop-in applied", rep)
				}
				if after, err := os.Stat(dropIn); err != nil || !after.ModTime().Equal(before.ModTime()) {
					t.Errorf("the new node-config wrote the drop-in again: %v", err)
				}
			}
		})
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitNodeStatus waits for node-config's status file to satisfy ok, and
// fails the test with the last state if it does not within a minute.
func waitNodeStatus(t *testing.T, path string, ok func(cache.NodeReport) bool) cache.NodeReport {
	t.Helper()
	var rep cache.NodeReport
	var last string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			last = err.Error()
			continue
		}
		last = string(b)
		rep = cache.NodeReport{}
		if json.Unmarshal(b, &rep) == nil && ok(rep) {
			return rep
		}
	}
	t.Fatalf("node-config's status never became what the test waits for; last:\n%s", last)
	return rep
}

// checkProbe runs the DaemonSet's readiness probe on the status file.
func checkProbe(t *testing.T, status string, ready bool) {
	t.Helper()
	out, err := exec.Command(regnormBin, "node-config", "probe", "--status-file", status).CombinedOutput()
	if (err == nil) != ready {
		t.Errorf("readiness probe: %v, want ready %v\n%s", err, ready, out)
	}
}

// checkFleet waits until regnorm's fleet view lists node in state, and
// returns it; it fails the test with the last view if it does not within
// 30 s (node-config reports a new state at once, the view is reused for 5 s).
func checkFleet(t *testing.T, base, node, state string) fleet.NodeStatus {
	t.Helper()
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get(base + "/api/v1/nodes")
		if err != nil {
			t.Fatal(err)
		}
		var view struct {
			Nodes []fleet.NodeStatus `json:"nodes"`
		}
		err = json.NewDecoder(resp.Body).Decode(&view)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(view.Nodes)
		last = string(b)
		for _, n := range view.Nodes {
			if n.Node == node && n.State == state {
				return n
			}
		}
	}
	t.Fatalf("the fleet view never listed %s as %q; last: %s", node, state, last)
	return fleet.NodeStatus{}
}

// nodeHeaders is a reverse proxy in front of regnorm that records, for
// each request containerd sends it, the Regnorm-Node header.
type nodeHeaders struct {
	url string
	mu  sync.Mutex
	got []string // "METHOD PATH: value"
}

func startNodeHeaders(t *testing.T, target string) *nodeHeaders {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	h := &nodeHeaders{}
	rp := httputil.NewSingleHostReverseProxy(u)
	transport := &http.Transport{DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	rp.Transport = transport
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.got = append(h.got, fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, strings.Join(r.Header.Values("Regnorm-Node"), ",")))
		h.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

func (h *nodeHeaders) requests() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// TestNodeConfigOnceBesideTheDaemonSet runs node-config as the DaemonSet
// does next to a real containerd (1.6.20 and v2.3.4) that reads its files,
// and then `node-config --once` with the DaemonSet's own arguments, as an
// operator checks a node: --once prints the node's state as JSON alone on
// stdout, and changes nothing (the hosts.toml file and the status file
// are as before, the probe still passes). A hosts.toml removed (as --once
// did before) is put back at the next check. Then the node pulls through
// regnorm (its manifest requests go up) and the image runs; and every
// request containerd sent to regnorm carried the node's name in the
// Regnorm-Node header, from the hosts.toml node-config wrote.
func TestNodeConfigOnceBesideTheDaemonSet(t *testing.T) {
	registryURL, _ := startRegistry(t)
	pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	upstreamHost := strings.TrimPrefix(registryURL, "http://")
	ref := upstreamHost + "/library/legacy:v1"
	for _, kind := range []containerdKind{containerd1620, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			node := startContainerdVersion(t, kind, containerdOptions{Hosts: map[string]string{}})
			reportToken := filepath.Join(t.TempDir(), "report-token")
			if err := os.WriteFile(reportToken, []byte("e2e-node-report-token\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			regnorm := startRegnormForWith(t, upstreamHost, registryURL,
				fmt.Sprintf("nodes:\n  reportTokenFile: %s\n  hostsDir: %s\n  containerdConfigDir: %s\n", reportToken, node.hostsDir, filepath.Dir(node.configFile)))
			// containerd reaches regnorm through the recorder; node-config
			// reports to regnorm directly.
			recorder := startNodeHeaders(t, regnorm)
			nodeName := "node-" + strings.ReplaceAll(kind.name, ".", "-")
			status := filepath.Join(t.TempDir(), "status.json")
			args := []string{"node-config", "--interval=1s", "--config-path=" + node.hostsDir, "--mirror=" + recorder.url, "--report-to=" + regnorm,
				"--containerd-config=" + node.configFile, "--containerd-socket=" + node.socket, "--status-file=" + status,
				"--node-name=" + nodeName, "--node-address=127.0.0.1", "--report-token-file=" + reportToken, upstreamHost + "=" + registryURL}
			start(t, "node-config", regnormBin, args...)
			waitNodeStatus(t, status, func(r cache.NodeReport) bool { return r.ReadsHostsToml })
			hosts := filepath.Join(node.hostsDir, upstreamHost, "hosts.toml")
			want, err := os.ReadFile(hosts)
			if err != nil {
				t.Fatal(err)
			}
			statusBefore, _ := os.ReadFile(status)

			// --once beside it, with the DaemonSet's arguments.
			var stdout, stderr bytes.Buffer
			once := exec.Command(regnormBin, slices.Insert(slices.Clone(args), 1, "--once")...)
			once.Stdout, once.Stderr = &stdout, &stderr
			if err := once.Run(); err != nil {
				t.Fatalf("node-config --once: %v\n%s", err, stderr.String())
			}
			dec := json.NewDecoder(&stdout)
			var rep cache.NodeReport
			if err := dec.Decode(&rep); err != nil {
				t.Fatalf("--once's stdout is not JSON: %v\n%s", err, stdout.String())
			}
			if _, err := dec.Token(); err != io.EOF {
				t.Fatalf("--once's stdout holds more than its JSON: %v", err)
			}
			if !rep.ReadsHostsToml || rep.ReportedAt.IsZero() {
				t.Errorf("--once's state: %+v", rep)
			}
			// Its report stands for the node until the DaemonSet's next:
			// it says it sent one.
			if !strings.Contains(stderr.String(), "sent this node's report to regnorm") {
				t.Errorf("--once does not say it reported:\n%s", stderr.String())
			}
			if got, err := os.ReadFile(hosts); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after --once, %s: %v\n%s", hosts, err, got)
			}
			if got, _ := os.ReadFile(status); !bytes.Equal(got, statusBefore) {
				t.Errorf("--once changed the DaemonSet's status file:\n%s", got)
			}
			checkProbe(t, status, true)

			// A hosts.toml removed is put back at the next check.
			if err := os.Remove(hosts); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				if got, _ := os.ReadFile(hosts); bytes.Equal(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("node-config did not put %s back", hosts)
				}
			}

			before := metric(t, regnorm, "regnorm_http_requests_total", `route="manifest"`)
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if after := metric(t, regnorm, "regnorm_http_requests_total", `route="manifest"`); after <= before {
				t.Fatalf("the pull did not go through regnorm: %v manifest requests before, %v after", before, after)
			}
			got := recorder.requests()
			if len(got) == 0 {
				t.Fatal("containerd sent nothing to regnorm")
			}
			for _, r := range got {
				if !strings.HasSuffix(r, ": "+nodeName) {
					t.Errorf("a request without the node's name (Regnorm-Node: %s): %s", nodeName, r)
				}
			}
			t.Logf("containerd %s sent %d requests, each with Regnorm-Node: %s (first: %s)", kind.name, len(got), nodeName, got[0])
			checkFleet(t, regnorm, nodeName, "uses the mirror")
		})
	}
}

// TestNodeConfigAdviceOnContainerdConfigDefault: on a node whose
// configuration is what `containerd config default` writes (1.6.20 and
// v2.3.4: the registry table is there, with config_path = ""), node-config
// quotes the empty config_path and says to change that line; followed to
// the letter (regtest.FollowAdvice), containerd starts (a second registry
// table would make it refuse the file) and then pulls through regnorm.
// The same with that config_path written over two lines (a multi-line string):
// the advice changes both lines (its first alone left the closing quotes
// behind, and containerd refused the file). And with legacy mirrors (which
// send the image's registry straight to itself) and a configs."<host>".tls
// table: containerd refuses both beside config_path (1.6.20 leaves its CRI
// plugin out: "`mirrors` cannot be set when `config_path` is provided",
// "`configs.tls` ..."; 2.3.4 the same for mirrors, and ignores the tls
// table), so the advice deletes them first; followed, containerd starts
// with CRI and pulls through regnorm (2.3.4 with the tls table left).
func TestNodeConfigAdviceOnContainerdConfigDefault(t *testing.T) {
	registryURL, _ := startRegistry(t)
	pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	upstreamHost := strings.TrimPrefix(registryURL, "http://")
	ref := upstreamHost + "/library/legacy:v1"
	const reason1620 = `config_path is "" (empty): containerd 1.6 reads no hosts.toml`
	const reason234 = `config_path is "" (empty), so containerd 2.3 uses its default, the list "/etc/containerd/certs.d:/etc/docker/certs.d"`
	for _, tt := range []struct {
		kind   containerdKind
		reason string
		// multiLine writes config_path = "" over two lines, as a
		// multi-line string with this delimiter.
		multiLine string
		// legacy adds the legacy mirrors (to the image's own registry)
		// and a configs."<host>".tls table.
		legacy bool
	}{
		{kind: containerd1620, reason: reason1620},
		{kind: containerd234, reason: reason234},
		{kind: containerd1620, reason: reason1620, multiLine: `"""`},
		{kind: containerd234, reason: reason234, multiLine: `'''`},
		{kind: containerd1620, reason: `the legacy registry.mirrors in [plugins."io.containerd.grpc.v1.cri".registry] replace hosts.toml, and containerd refuses them beside config_path`, legacy: true},
		{kind: containerd234, reason: `the legacy registry.mirrors in [plugins."io.containerd.cri.v1.images".registry] replace hosts.toml, and containerd refuses them beside config_path`, legacy: true},
	} {
		name := tt.kind.name
		if tt.multiLine != "" {
			name += " config_path over two lines"
		}
		var legacy string
		if tt.legacy {
			name += " legacy mirrors and configs.tls"
			legacy = registryURL
		}
		t.Run(name, func(t *testing.T) {
			node := startContainerdDefault(t, tt.kind, tt.multiLine, legacy)
			regnorm := startRegnormFor(t, upstreamHost, registryURL)
			status := filepath.Join(t.TempDir(), "status.json")
			start(t, "node-config", regnormBin, "node-config", "--interval=1s", "--config-path="+node.hostsDir, "--mirror="+regnorm, "--report=false",
				"--containerd-config="+node.configFile, "--containerd-socket="+node.socket, "--status-file="+status, upstreamHost+"="+registryURL)
			rep := waitNodeStatus(t, status, func(r cache.NodeReport) bool { return r.ContainerdVersion != "" })
			if rep.ReadsHostsToml || !strings.Contains(rep.Reason, tt.reason) {
				t.Fatalf("on containerd config default: reads %v, reason %q; want %q", rep.ReadsHostsToml, rep.Reason, tt.reason)
			}
			if tt.multiLine != "" && !strings.Contains(rep.Fix, "change these 2 lines") {
				t.Fatalf("the advice for a config_path over two lines:\n%s", rep.Fix)
			}
			if tt.legacy && (!strings.HasPrefix(rep.Fix, "1. In "+node.configFile+", delete these") || (tt.kind.major == 1) != strings.Contains(rep.Reason, "`configs.tls` cannot be set")) {
				t.Fatalf("with legacy mirrors and configs.tls, containerd %s: %s\n%s", tt.kind.name, rep.Reason, rep.Fix)
			}
			t.Logf("containerd %s, containerd config default: %s\n%s", tt.kind.name, rep.Reason, rep.Fix)
			if err := regtest.FollowAdvice(rep.Fix); err != nil {
				t.Fatalf("the advice cannot be followed as printed: %v\n%s", err, rep.Fix)
			}
			node.restart(t) // fails the test if containerd refuses the file
			waitNodeStatus(t, status, func(r cache.NodeReport) bool { return r.ReadsHostsToml })
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if got := metric(t, regnorm, "regnorm_http_requests_total", `route="manifest"`); got == 0 {
				t.Fatal("the pull did not go through regnorm")
			}
		})
	}
}

// startContainerdDefault starts a containerd of kind on the configuration
// `containerd config default` prints, changed only where a test must be
// apart from the machine's containerd: its root, state, sockets and
// drop-in directory, and (2.3.4) no NRI socket shared by every daemon.
// With multiLine, its config_path = "" is written over two lines, as a
// multi-line string with that delimiter. With legacyMirror (a registry's
// URL), legacy mirrors send that registry to itself, and the registry
// settings have a configs."<host>".tls table.
func startContainerdDefault(t *testing.T, kind containerdKind, multiLine, legacyMirror string) *containerd {
	t.Helper()
	dir, err := os.MkdirTemp("", "rn-ctd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &containerd{kind: kind, socket: filepath.Join(dir, "c.sock"), hostsDir: filepath.Join(dir, "certs.d"),
		configFile: filepath.Join(dir, "config.toml"), confDir: filepath.Join(dir, "conf.d"), path: os.Getenv("PATH")}
	if kind.shimDir != "" {
		c.path = kind.shimDir + string(os.PathListSeparator) + c.path
	}
	out, err := exec.Command(kind.bin, "config", "default").Output()
	if err != nil {
		t.Fatalf("containerd %s config default: %v", kind.name, err)
	}
	cfg := string(out)
	replace := func(old, new string) {
		t.Helper()
		if strings.Count(cfg, old) != 1 {
			t.Fatalf("containerd %s config default has %d of %q", kind.name, strings.Count(cfg, old), old)
		}
		cfg = strings.Replace(cfg, old, new, 1)
	}
	if kind.major == 1 {
		replace(`root = "/var/lib/containerd"`, fmt.Sprintf("root = %q", filepath.Join(dir, "root")))
		replace(`state = "/run/containerd"`, fmt.Sprintf("state = %q", filepath.Join(dir, "state")))
		replace(`address = "/run/containerd/containerd.sock"`, fmt.Sprintf("address = %q", c.socket))
		replace("disabled_plugins = []", `disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]`)
	} else {
		replace(`root = '/var/lib/containerd'`, fmt.Sprintf("root = %q", filepath.Join(dir, "root")))
		replace(`state = '/run/containerd'`, fmt.Sprintf("state = %q", filepath.Join(dir, "state")))
		replace(`address = '/run/containerd/containerd.sock'`, fmt.Sprintf("address = %q", c.socket))
		replace(`address = '/run/containerd/containerd.sock.ttrpc'`, fmt.Sprintf("address = %q", c.socket+".ttrpc"))
		replace("imports = ['/etc/containerd/conf.d/*.toml']", fmt.Sprintf("imports = [%q]", filepath.Join(c.confDir, "*.toml")))
		replace("disabled_plugins = []", "disabled_plugins = ['io.containerd.nri.v1.nri']")
	}
	if multiLine != "" {
		// The registry's (2.3.4's transfer service has one of its own).
		table, empty := `[plugins."io.containerd.grpc.v1.cri".registry]`, `config_path = ""`
		if kind.major != 1 {
			table, empty = `[plugins.'io.containerd.cri.v1.images'.registry]`, `config_path = ''`
		}
		at := strings.Index(cfg, table)
		end := at + strings.Index(cfg[max(at, 0):], empty)
		if at < 0 || end < at {
			t.Fatalf("containerd %s config default has no %s under %s", kind.name, empty, table)
		}
		cfg = cfg[:end] + "config_path = " + multiLine + "\n" + multiLine + cfg[end+len(empty):]
	}
	if legacyMirror != "" {
		host := strings.TrimPrefix(legacyMirror, "http://")
		if kind.major == 1 {
			replace(`      [plugins."io.containerd.grpc.v1.cri".registry.configs]`+"\n", fmt.Sprintf(`      [plugins."io.containerd.grpc.v1.cri".registry.configs]
        [plugins."io.containerd.grpc.v1.cri".registry.configs.%q.tls]
          insecure_skip_verify = true
`, host))
			replace(`      [plugins."io.containerd.grpc.v1.cri".registry.mirrors]`+"\n", fmt.Sprintf(`      [plugins."io.containerd.grpc.v1.cri".registry.mirrors]
        [plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
          endpoint = [%q]
`, host, legacyMirror))
		} else {
			replace("    [plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n", fmt.Sprintf(`    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ''

      [plugins.'io.containerd.cri.v1.images'.registry.mirrors.'%s']
        endpoint = ['%s']

      [plugins.'io.containerd.cri.v1.images'.registry.configs.'%s'.tls]
        insecure_skip_verify = true
`, host, legacyMirror, host))
		}
	}
	if err := os.WriteFile(c.configFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startDaemon(t)
	return c
}
