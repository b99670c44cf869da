package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
)

func (h *harness) nodes(t *testing.T) []proxy.NodeStatus {
	t.Helper()
	r := h.do(t, http.MethodGet, "/api/v1/nodes", nil)
	var body struct {
		Nodes []proxy.NodeStatus `json:"nodes"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil {
		t.Fatalf("nodes: %d %s", r.status, r.body)
	}
	return body.Nodes
}

// TestFleetView: a node that pulls is listed with its containerd version
// and "uses the mirror"; node-config's report of a node that never pulled
// says why not and what to add; a report and the pulls of one address are
// one node; nodes are forgotten after the forget period; regnorm_nodes
// counts the pulling ones by containerd minor version.
func TestFleetView(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clk})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	img := h.push(t, "library/redis", "old", legacy, oneFile)
	normalized, _ := h.pullByTag(t, "library/redis", "old")
	ua := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"containerd/1.6.20~ds1"}}
	// pullByTag made two manifest requests (HEAD by tag, GET by digest);
	// then a pull by tag, one by the normalized digest, one by the original.
	for _, ref := range []string{"app/manifests/v1", "redis/manifests/" + normalized.String(), "redis/manifests/" + img.ManifestDigest.String()} {
		if r := h.do(t, http.MethodHead, "/v2/library/"+ref, ua); r.status != http.StatusOK {
			t.Fatalf("pull %s: %d", ref, r.status)
		}
	}
	reports := []cache.NodeReport{
		{Node: "node-a", Address: "127.0.0.1", ContainerdVersion: "v1.6.20", ReadsHostsToml: true},
		{Node: "node-b", Address: "10.0.0.9", ContainerdVersion: "v2.3.4", ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d",
			Reason: "config_path is the list", Fix: "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'"},
	}
	for _, rep := range reports {
		if err := proxy.ReportNode(context.Background(), nil, h.url, "", rep); err != nil {
			t.Fatal(err)
		}
	}
	nodes := h.nodes(t)
	if len(nodes) != 2 {
		t.Fatalf("nodes: %+v", nodes)
	}
	if n := nodes[0]; n.Node != "node-b" || n.State != "does not use the mirror" || n.NodeConfig == nil || !strings.Contains(n.NodeConfig.Fix, "config_path") {
		t.Fatalf("the node that does not use the mirror first, with the fix: %+v", n)
	}
	if n := nodes[1]; n.Node != "node-a" || n.State != "uses the mirror" || n.ContainerdVersion != "1.6.20" || n.Pulls != 5 || n.OriginalDigestPulls != 1 {
		t.Fatalf("the node that pulled: %+v", n)
	}
	page := string(h.do(t, http.MethodGet, "/status", nil).body)
	for _, want := range []string{"node-b", "config_path is the list", "1.6: 1"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	h.srv.CountNodes()
	if got := h.metric(t, "regnorm_nodes", `containerd="1.6"`); got != 1 {
		t.Fatalf("regnorm_nodes{containerd=1.6} = %v", got)
	}

	clk.Advance(25 * time.Hour)
	if nodes := h.nodes(t); len(nodes) != 0 {
		t.Fatalf("after the forget period: %+v", nodes)
	}
	h.srv.CountNodes()
	if got := h.metric(t, "regnorm_nodes", ""); got != 0 {
		t.Fatalf("regnorm_nodes sums to %v after the forget period", got)
	}
	if body := string(h.do(t, http.MethodGet, "/metrics", nil).body); strings.Contains(body, `regnorm_nodes{containerd="1.6"}`) {
		t.Fatal("a forgotten node's version is still counted")
	}
}

// TestNodeReportsAreChecked: a report without a node name, with a bad
// address or unknown fields is refused.
func TestNodeReportsAreChecked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, body := range []string{`{"address":"10.0.0.1"}`, `{"node":"n","address":"not-an-ip"}`, `{"node":"n","bogus":1}`, `not json`} {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/nodes", bytes.NewReader([]byte(body)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", body, resp.StatusCode)
		}
	}
}
