//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOperatorsView: after containerd pulls a rewritten image through
// regnorm, a real Prometheus scraping regnorm reports the rewrite through
// PromQL, and a real headless Chromium shows it on the status page (the
// screenshot is kept as an artifact). Three real containerd nodes (1.6.20,
// 1.6.8, 2.3.4) pull from one address, each naming itself in the
// Regnorm-Node header of its hosts.toml: the fleet view has them as three
// nodes with their own versions, beside reported nodes that have not
// pulled yet or do not use the mirror, and the page lists every one.
func TestOperatorsView(t *testing.T) {
	registryURL, _ := startRegistry(t)
	legacy := pushHello(t, registryURL, "library/redis", "2.8.23", legacyConfig)
	tokenFile := filepath.Join(t.TempDir(), "report-token")
	if err := os.WriteFile(tokenFile, []byte(viewReportToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No pre-made variants: the reported 1.6.8 and 2.3.4 nodes would have
	// theirs made in the background, and the rewrites counted below would
	// depend on when Prometheus scrapes.
	proxyURL, _ := startRegnorm(t, registryURL, "nodes:\n  reportTokenFile: "+tokenFile+"\nnormalize:\n  premade: false\n")
	promURL := startPrometheus(t, proxyURL)

	named := func(name string) containerdOptions {
		return containerdOptions{Hosts: map[string]string{"docker.io": mirrorHosts("https://registry-1.docker.io", proxyURL) +
			fmt.Sprintf("  [host.%q.header]\n    Regnorm-Node = %q\n", proxyURL, name)}}
	}
	// node-config reports on a node before its containerd pulls through
	// regnorm (it writes the hosts.toml, then reports): a Regnorm-Node
	// name counts only for a node reported on.
	const reads = `"hostsDir":"/etc/containerd/certs.d","readsHostsToml":true`
	for _, rep := range []string{
		`{"node":"node-a","address":"127.0.0.1","containerdVersion":"v1.6.20","configVersion":2,` + reads + `}`,
		`{"node":"node-b","address":"127.0.0.1","containerdVersion":"v1.6.8","configVersion":2,` + reads + `}`,
		`{"node":"node-c","address":"127.0.0.1","containerdVersion":"v2.3.4","configVersion":3,` + reads + `}`,
	} {
		postViewReport(t, proxyURL, rep)
	}
	node := startContainerdVersion(t, containerd1620, named("node-a"))
	if _, err := node.pull(t, "docker.io/library/redis:2.8.23"); err != nil {
		t.Fatalf("pull: %v", err)
	}
	normalized := node.repoDigest(t, "docker.io/library/redis:2.8.23")

	t.Run("prometheus", func(t *testing.T) {
		if got := promQuery(t, promURL, `up{job="regnorm"}`); got != 1 {
			t.Fatalf("up = %v", got)
		}
		if got := promQuery(t, promURL, `sum(regnorm_rewrites_total{kind="config-media-type"})`); got != 1 {
			t.Fatalf("rewrites through PromQL = %v, want 1", got)
		}
		if got := promQuery(t, promURL, `sum(regnorm_normalized_manifests_served_total)`); got < 1 {
			t.Fatalf("normalized manifests served = %v", got)
		}
	})

	// Two more nodes at the same address, then node-config's reports: of
	// a fourth there that has not pulled, of two that do not
	// use the mirror, and of a rollout's nodes that have not pulled yet.
	for name, kind := range map[string]containerdKind{"node-b": containerd168, "node-c": containerd234} {
		if _, err := startContainerdVersion(t, kind, named(name)).pull(t, "docker.io/library/redis:2.8.23"); err != nil {
			t.Fatalf("pull on %s (containerd %s): %v", name, kind.name, err)
		}
	}
	for _, rep := range []string{
		`{"node":"node-d","address":"127.0.0.1","containerdVersion":"v2.3.4","configVersion":3,` + reads + `}`,
		`{"node":"node-e","address":"10.0.0.9","containerdVersion":"v2.3.4","hostsDir":"/etc/containerd/certs.d","configVersion":3,` +
			`"configPath":"/etc/containerd/certs.d:/etc/docker/certs.d","reasons":[{"code":"config-path-list","major":2,"minor":3}]}`,
		`{"node":"node-f","address":"10.0.0.10","containerdVersion":"v1.7.0","hostsDir":"/etc/containerd/certs.d","configVersion":2,` +
			`"reasons":[{"code":"legacy-mirrors","section":"io.containerd.grpc.v1.cri"}]}`,
	} {
		postViewReport(t, proxyURL, rep)
	}
	rollout := func(from, to int) {
		for i := from; i < to; i++ {
			postViewReport(t, proxyURL, fmt.Sprintf(`{"node":"rollout-%02d","address":"10.0.1.%d","containerdVersion":"v2.3.4","configVersion":3,`+reads+`}`, i, i))
		}
	}
	rollout(0, 4)

	t.Run("three nodes, one address", func(t *testing.T) {
		var body struct {
			Nodes []struct {
				Node, ContainerdVersion, State, PullsMatchedBy string
				AddressSharedBy                                int
				Pulls                                          int64
				NodeConfigFix                                  *struct{ Can string }
			}
		}
		getViewJSON(t, proxyURL+"/api/v1/nodes", &body)
		type row struct {
			version, state, matched string
			shared                  int
			fix                     string
		}
		got := map[string]row{}
		for _, n := range body.Nodes {
			r := row{n.ContainerdVersion, n.State, n.PullsMatchedBy, n.AddressSharedBy, ""}
			if n.NodeConfigFix != nil {
				r.fix = n.NodeConfigFix.Can
			}
			if n.State == "uses the mirror" && n.Pulls < 2 { // a HEAD by tag, a GET by digest
				t.Errorf("%s: %d manifest requests", n.Node, n.Pulls)
			}
			got[n.Node] = r
		}
		for name, want := range map[string]row{
			"node-a": {"1.6.20", "uses the mirror", "node header", 4, ""},
			"node-b": {"1.6.8", "uses the mirror", "node header", 4, ""},
			"node-c": {"2.3.4", "uses the mirror", "node header", 4, ""},
			"node-d": {"v2.3.4", "no pull seen yet", "", 4, ""},
			"node-e": {"v2.3.4", "does not use the mirror", "", 0, "may"},
			"node-f": {"v1.7.0", "does not use the mirror", "", 0, "cannot"},
		} {
			if got[name] != want {
				t.Errorf("%s: %+v, want %+v", name, got[name], want)
			}
		}
		if len(got) != 6+4 {
			t.Errorf("%d nodes, want %d: %+v", len(got), 6+4, got)
		}
	})

	t.Run("status page in a browser", func(t *testing.T) {
		dom := chromium(t, "--dump-dom", proxyURL+"/status")
		for _, want := range []string{"docker.io/library/redis", "2.8.23", normalized, legacy.ManifestDigest.String(), "config-media-type",
			// every node, in its state
			`does not use the mirror</span>: 2 nodes</h3>`, `no pull seen yet</span>: 5 nodes</h3>`, `uses the mirror</span>: 3 nodes</h3>`,
			`<code class="name">node-a</code>`, `<code class="name">node-b</code>`, `<code class="name">node-c</code>`,
			`<code class="name">node-d</code>`, `<code class="name">rollout-03</code>`,
			"address shared by 4 nodes", "cannot be told apart",
			`<span class="fix-may">may fix it</span>`, `<span class="fix-cannot">cannot fix it</span>`} {
			if !strings.Contains(dom, want) {
				t.Errorf("the rendered page lacks %q", want)
			}
		}
		shot := filepath.Join(artifactsDir(t), "status-page.png")
		chromium(t, "--screenshot="+shot, "--window-size=1400,900", proxyURL+"/status")
		if fi, err := os.Stat(shot); err != nil || fi.Size() < 10_000 {
			t.Fatalf("screenshot %s: %v", shot, err)
		}
		t.Logf("screenshot: %s", shot)
		shot = filepath.Join(artifactsDir(t), "status-page-nodes.png")
		chromium(t, "--screenshot="+shot, "--window-size=1400,2000", proxyURL+"/status")
		t.Logf("screenshot with the nodes: %s", shot)
	})

	t.Run("many nodes are folded", func(t *testing.T) {
		rollout(4, 22) // 23 nodes that have not pulled yet
		dom := chromium(t, "--dump-dom", proxyURL+"/status")
		for _, want := range []string{`<details><summary><span class="state-nopull">no pull seen yet</span>: 23 nodes</summary>`,
			`<code class="name">rollout-21</code>`, `does not use the mirror</span>: 2 nodes</h3>`} {
			if !strings.Contains(dom, want) {
				t.Errorf("the rendered page lacks %q", want)
			}
		}
		shot := filepath.Join(artifactsDir(t), "status-page-nodes-folded.png")
		chromium(t, "--screenshot="+shot, "--window-size=1400,2000", proxyURL+"/status")
		t.Logf("screenshot with many nodes: %s", shot)
	})
}

// viewReportToken is node-config's report token in these tests.
const viewReportToken = "e2e-operators-report-token"

// postViewReport sends a node report to regnorm as node-config does.
func postViewReport(t *testing.T, base, report string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/nodes", strings.NewReader(report))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+viewReportToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("report %s: %d", report, resp.StatusCode)
	}
}

// getViewJSON decodes the JSON answer to a GET of url into v.
func getViewJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// startPrometheus runs Debian's Prometheus with its own config and data
// directory on 127.0.0.1, scraping regnorm every second.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	u, _ := url.Parse(target)
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: regnorm\n  static_configs:\n  - targets: [%q]\n", u.Host)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	start(t, "prometheus", prometheusBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	waitHTTP(t, "http://"+addr+"/-/ready")
	return "http://" + addr
}

// promQuery polls an instant query until it returns a sample (scrapes are
// every second), and returns its value.
func promQuery(t *testing.T, base, query string) float64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
		if err == nil {
			var body struct {
				Status string `json:"status"`
				Data   struct {
					Result []struct {
						Value [2]any `json:"value"`
					} `json:"result"`
				} `json:"data"`
			}
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if body.Status == "success" && len(body.Data.Result) > 0 {
				var v float64
				fmt.Sscan(fmt.Sprint(body.Data.Result[0].Value[1]), &v)
				if v > 0 || time.Now().After(deadline) {
					return v
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus never answered %s", query)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// chromium runs headless Chromium with the flags that keep it off the
// network and returns what it printed.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir()}
	out, err := exec.CommandContext(ctx, chromiumBin, append(base, args...)...).Output()
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return string(out)
}

// artifactsDir is where tests leave files for people to look at:
// $REGNORM_ARTIFACTS, or e2e/artifacts.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("REGNORM_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
