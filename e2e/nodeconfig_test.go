//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/cache"
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
			if !want && (!strings.Contains(rep.Reason, tt.reason) || rep.Fix == "") {
				t.Errorf("reason %q, fix %q; want %q and the lines to add", rep.Reason, rep.Fix, tt.reason)
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
