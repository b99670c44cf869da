package proxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/operator"
)

func (h *harness) nodes(t *testing.T) []fleet.NodeStatus {
	t.Helper()
	r := h.do(t, http.MethodGet, "/api/v1/nodes", nil)
	var body struct {
		Nodes []fleet.NodeStatus `json:"nodes"`
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
	// then pulls by tag, one by the normalized digest, one by the original
	// (which this node's rules fix: the config media type).
	for _, ref := range []string{"app/manifests/v1", "redis/manifests/old", "redis/manifests/" + normalized.String(), "redis/manifests/" + img.ManifestDigest.String()} {
		if r := h.do(t, http.MethodHead, "/v2/library/"+ref, ua); r.status != http.StatusOK {
			t.Fatalf("pull %s: %d", ref, r.status)
		}
	}
	reports := []cache.NodeReport{
		{Node: "node-a", Address: "127.0.0.1", ContainerdVersion: "v1.6.20", ReadsHostsToml: true, HostsDir: "/etc/containerd/certs.d", ConfigVersion: 2},
		// The report says why in codes; regnorm makes the words and the
		// lines to add from them and the report's facts.
		{Node: "node-b", Address: "10.0.0.9", ContainerdVersion: "v2.3.4", ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d",
			HostsDir: "/etc/containerd/certs.d", ConfigVersion: 3, Reasons: []containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}}},
	}
	for _, rep := range reports {
		if err := h.reporter().ReportNode(context.Background(), rep); err != nil {
			t.Fatal(err)
		}
	}
	nodes := h.nodes(t)
	if len(nodes) != 2 {
		t.Fatalf("nodes: %+v", nodes)
	}
	if n := nodes[0]; n.Node != "node-b" || n.State != "does not use the mirror" || n.NodeConfig == nil ||
		!strings.HasSuffix(n.NodeConfig.Fix, "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'") {
		t.Fatalf("the node that does not use the mirror first, with the fix: %+v", n)
	}
	if n := nodes[1]; n.Node != "node-a" || n.State != "uses the mirror" || n.ContainerdVersion != "1.6.20" || n.Pulls != 6 || n.OriginalDigestPulls != 1 {
		t.Fatalf("the node that pulled: %+v", n)
	}
	page := string(h.do(t, http.MethodGet, "/status", nil).body)
	for _, want := range []string{"node-b", "config_path is the list &#34;/etc/containerd/certs.d:/etc/docker/certs.d&#34;: containerd 2.3 pulls through the transfer service", "1.6: 1"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	h.built.fleet.Count()
	if got := h.metric(t, "regnorm_nodes", `containerd="1.6"`); got != 1 {
		t.Fatalf("regnorm_nodes{containerd=1.6} = %v", got)
	}

	clk.Advance(25 * time.Hour)
	if nodes := h.nodes(t); len(nodes) != 0 {
		t.Fatalf("after the forget period: %+v", nodes)
	}
	h.built.fleet.Count()
	if got := h.metric(t, "regnorm_nodes", ""); got != 0 {
		t.Fatalf("regnorm_nodes sums to %v after the forget period", got)
	}
	if got := h.metric(t, "regnorm_nodes", `containerd="1.6"`); got != 0 {
		t.Fatalf("a forgotten node's version is still counted: regnorm_nodes{containerd=1.6} = %v", got)
	}
}

// TestNodeReportsAreChecked: a report that is not JSON, names no node,
// has a bad address or hosts directory, an unknown, oversized or
// control-character field, words (reason, fix), a reason outside the fixed
// set or with values it does not take, or a drop-in that is not
// node-config's under nodes.containerdConfigDir is refused, and nothing is
// kept.
func TestNodeReportsAreChecked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{hostsDir: "/d"})
	post := func(contentType, body string) int {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/api/v1/nodes", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testReportToken)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `{"node":"n","address":"10.0.0.1","hostsDir":"/d"}`
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded"} {
		if got := post(ct, good); got != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %d, want 415", ct, got)
		}
	}
	for _, body := range []string{
		`{"address":"10.0.0.1","hostsDir":"/d"}`,
		`{"node":"n","address":"not-an-ip","hostsDir":"/d"}`,
		`{"node":"n","hostsDir":"relative/dir"}`,
		`{"node":"n","hostsDir":"/d'\n[plugins.x]"}`,
		`{"node":"n","hostsDir":"/e"}`, // not nodes.hostsDir
		`{"node":"n","hostsDir":"/d","bogus":1}`,
		`{"node":"n","hostsDir":"/d","configPath":"` + strings.Repeat("x", 1025) + `"}`,
		`{"node":"n","hostsDir":"/d","reason":"config_path is not set"}`,
		`{"node":"n","hostsDir":"/d","fix":"[plugins.x]"}`,
		`{"node":"n","hostsDir":"/d","configVersion":1000}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"restart-now"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"no-drop-in-dir"}]}`, // only a why
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"fix-refused"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"fix-refused","why":"no-config-path"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"no-config-path","path":"/etc/containerd/conf.d/99-regnorm.toml"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"legacy-mirrors","section":"evil"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"fix-refused","why":"legacy-settings","key":"run this"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"no-config-path","major":-1}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"drop-in-written","path":"/var/lib/kubelet/pods/1/99-regnorm.toml"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"drop-in-written","path":"/etc/containerd/conf.d/other.toml"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[{"code":"drop-in-written"}]}`,
		`{"node":"n","hostsDir":"/d","reasons":[` + strings.Repeat(`{"code":"no-config-path"},`, 8) + `{"code":"no-config-path"}]}`,
		`{"node":"n","hostsDir":"/d","dropIn":"/etc/containerd/../../tmp/99-regnorm.toml"}`,
		`{"node":"n","hostsDir":"/d","dropIn":"/etc/containerdx/99-regnorm.toml"}`,
		`{"node":"n","hostsDir":"/d","dropIn":"/etc/containerd/conf.d/evil.toml"}`,
		`{"node":"` + strings.Repeat("n", 254) + `","hostsDir":"/d"}`,
		`{"node":"n\u0007","hostsDir":"/d"}`,
		`not json`,
		good + good,
	} {
		if got := post("application/json", body); got != http.StatusBadRequest {
			t.Errorf("%.80s: %d, want 400", body, got)
		}
	}
	if got := post("application/json", `{"node":"n","hostsDir":"/d","configPath":"`+strings.Repeat("x", 20<<10)+`"}`); got != http.StatusRequestEntityTooLarge {
		t.Errorf("a report over 16 KiB: %d, want 413", got)
	}
	if nodes := h.nodes(t); len(nodes) != 0 {
		t.Fatalf("refused reports were kept: %+v", nodes)
	}
	for _, body := range []string{good, `{"node":"n","hostsDir":"/d","dropIn":"/etc/containerd/conf.d/99-regnorm.toml","reasons":[{"code":"version-assumed","major":2,"minor":3,"configVersion":3},` +
		`{"code":"config-path-list","major":2,"minor":3},{"code":"drop-in-no-fix","why":"legacy-mirrors","section":"io.containerd.cri.v1.images","path":"/etc/containerd/conf.d/99-regnorm.toml"}]}`} {
		if got := post("application/json; charset=utf-8", body); got != http.StatusNoContent {
			t.Fatalf("a good report: %d (%s)", got, body)
		}
	}
}

// TestNodeReportsAreBounded: with maxNodes nodes known, a new node's
// report is refused and a known node's is taken; once the known ones are
// past the forget period they no longer count, and the background pass
// deletes them from the store.
func TestNodeReportsAreBounded(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clk, hostsDir: "/d"})
	ctx := context.Background()
	for i := range fleet.MaxNodes {
		if err := h.store.PutNodeReport(ctx, cache.NodeReport{Node: fmt.Sprintf("node-%d", i), HostsDir: "/d", ReportedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	report := func(node string) error {
		return h.reporter().ReportNode(ctx, cache.NodeReport{Node: node, HostsDir: "/d", ReadsHostsToml: true})
	}
	if err := report("one-too-many"); err == nil || !strings.Contains(err.Error(), "nodes are known already") {
		t.Fatalf("a new node past the bound: %v", err)
	}
	if err := report("node-7"); err != nil {
		t.Fatalf("a known node reporting again: %v", err)
	}

	clk.Advance(25 * time.Hour)
	if err := report("newcomer"); err != nil {
		t.Fatalf("a new node once the others are forgotten: %v", err)
	}
	// node-7 reports again where the listing in use cannot see it yet
	// (another replica): pruning reads before it deletes.
	if err := h.store.PutNodeReport(ctx, cache.NodeReport{Node: "node-7", HostsDir: "/d", ReportedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	h.built.fleet.Prune(ctx)
	left, err := h.store.ListNodeReports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, r := range left {
		names = append(names, r.Node)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"newcomer", "node-7"}) {
		t.Fatalf("after pruning, %d reports are stored, want the newcomer's and node-7's fresh one", len(left))
	}
}

// postReport sends rep to h as a client with header would, and returns
// the answer.
func (h *harness) postReport(t *testing.T, rep cache.NodeReport, header http.Header) response {
	t.Helper()
	body, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	for k, v := range header {
		hdr[k] = v
	}
	return h.doBody(t, http.MethodPost, "/api/v1/nodes", hdr, string(body))
}

// TestNodeReportsNeedTheReportToken: a report without the report token
// (none, a wrong one, a client's Basic credentials) is refused with an OCI
// 401 and leaves the node's report as node-config sent it.
func TestNodeReportsNeedTheReportToken(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	genuine := cache.NodeReport{Node: "worker-1", Address: "10.0.0.1", ContainerdVersion: "v2.3.4", HostsDir: "/etc/containerd/certs.d",
		ConfigVersion: 3, ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d", Reasons: []containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}}}
	if err := h.reporter().ReportNode(context.Background(), genuine); err != nil {
		t.Fatal(err)
	}
	forged := genuine
	forged.ReadsHostsToml, forged.Reasons, forged.ConfigPath = true, nil, "/forged"
	for name, header := range map[string]http.Header{
		"no credentials":                   nil,
		"a wrong token":                    {"Authorization": {"Bearer not-the-report-token"}},
		"Basic":                            {"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("node:"+testReportToken))}},
		"the token, not as a Bearer token": {"Authorization": {testReportToken}},
	} {
		r := h.postReport(t, forged, header)
		if r.status != http.StatusUnauthorized || r.ociError(t) != errcode.Unauthorized || r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %q %s, want 401 UNAUTHORIZED with a challenge", name, r.status, r.header.Get("WWW-Authenticate"), r.body)
		}
	}
	if err := (proxy.Client{Server: h.url}).ReportNode(context.Background(), forged); err == nil {
		t.Error("node-config's client without the token: accepted")
	}
	nodes := h.nodes(t)
	if len(nodes) != 1 || nodes[0].NodeConfig == nil || !strings.HasPrefix(nodes[0].NodeConfig.Reason, "config_path is the list") || nodes[0].State != "does not use the mirror" {
		t.Fatalf("the fleet view after refused reports: %+v", nodes)
	}
	if page := string(h.do(t, http.MethodGet, "/status", nil).body); strings.Contains(page, "forged") {
		t.Fatal("the status page shows a refused report")
	}
}

// TestNodeReportsOffWithoutAToken: with no report token configured, every
// report is refused (403 DENIED), whatever it carries, and none is kept.
func TestNodeReportsOffWithoutAToken(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{noReportToken: true})
	rep := cache.NodeReport{Node: "worker-1", HostsDir: "/etc/containerd/certs.d", ConfigVersion: 3}
	for _, header := range []http.Header{nil, {"Authorization": {"Bearer "}}, {"Authorization": {"Bearer " + testReportToken}}} {
		if r := h.postReport(t, rep, header); r.status != http.StatusForbidden || r.ociError(t) != errcode.Denied {
			t.Errorf("%v: %d %s, want 403 DENIED", header, r.status, r.body)
		}
	}
	if err := h.reporter().ReportNode(context.Background(), rep); err == nil || !strings.Contains(err.Error(), "nodes.reportTokenFile") {
		t.Errorf("node-config's client: %v, want the refusal naming nodes.reportTokenFile", err)
	}
	if nodes := h.nodes(t); len(nodes) != 0 {
		t.Fatalf("refused reports were kept: %+v", nodes)
	}
}

// TestFleetFixNamesOnlyTheConfiguredHostsDir: the lines the fleet view
// tells operators to add name nodes.hostsDir, never a path a report
// brought. A report about another hosts directory (a pod-writable one,
// say) is refused, even with the token, and so is one with a fix of its
// own; one stored before (an older regnorm took it) is not shown.
func TestFleetFixNamesOnlyTheConfiguredHostsDir(t *testing.T) {
	t.Parallel()
	const hostsDir = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
	const foreign = "/var/lib/kubelet/pods/0b1c/volumes/kubernetes.io~empty-dir/certs.d"
	h := newHarness(t, harnessOptions{hostsDir: hostsDir})
	ctx := context.Background()
	base := cache.NodeReport{Node: "worker-1", Address: "10.0.0.1", ContainerdVersion: "v2.3.4", ConfigVersion: 3,
		Reasons: []containerdcfg.Reason{{Code: containerdcfg.NoConfigPath, Major: 2, Minor: 3}}}

	rep := base
	rep.HostsDir = foreign
	if r := h.postReport(t, rep, http.Header{"Authorization": {"Bearer " + testReportToken}}); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "nodes.hostsDir") {
		t.Errorf("a report about %s: %d %s, want 400 naming nodes.hostsDir", foreign, r.status, r.body)
	}
	old := base
	old.Node, old.HostsDir, old.ReportedAt = "worker-2", foreign, time.Now()
	if err := h.store.PutNodeReport(ctx, old); err != nil {
		t.Fatal(err)
	}
	rep = base
	rep.Node, rep.HostsDir, rep.Fix = "worker-3", hostsDir, "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '"+foreign+"'"
	if r := h.postReport(t, rep, http.Header{"Authorization": {"Bearer " + testReportToken}}); r.status != http.StatusBadRequest {
		t.Errorf("a report with a fix of its own: %d %s, want 400", r.status, r.body)
	}
	rep.Fix = ""
	if err := h.reporter().ReportNode(ctx, rep); err != nil {
		t.Fatal(err)
	}

	want := "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + hostsDir + "'"
	nodes := h.nodes(t)
	if len(nodes) != 1 || nodes[0].Node != "worker-3" || nodes[0].NodeConfig == nil || !strings.HasSuffix(nodes[0].NodeConfig.Fix, want) {
		t.Fatalf("fleet view: %+v, want worker-3 alone, told to add %q", nodes, want)
	}
	for place, body := range map[string][]byte{"/status": h.do(t, http.MethodGet, "/status", nil).body, "/api/v1/nodes": h.do(t, http.MethodGet, "/api/v1/nodes", nil).body} {
		if strings.Contains(string(body), "kubelet") {
			t.Errorf("%s shows the foreign path", place)
		}
	}
	if page := string(h.do(t, http.MethodGet, "/status", nil).body); !strings.Contains(page, "config_path = &#39;"+hostsDir+"&#39;") {
		t.Errorf("the status page does not tell to add config_path = '%s'", hostsDir)
	}
}

// TestNodeReportsCarryNoWords: whoever holds the report token (one token,
// mounted on every node) can write any node's row, but only within a
// fixed set: a report with words of its own (a reason, a fix) or a drop-in
// that is not node-config's under nodes.containerdConfigDir is refused, so
// that a pod-writable path never reaches the status page as what to
// restart containerd for. What /status and the API say about a node is
// regnorm's text, made from the report's codes; a value of the report
// (its config_path, its drop-in) is quoted in it. A report an older
// regnorm stored with words is shown without them, and one with a foreign
// drop-in not at all.
func TestNodeReportsCarryNoWords(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	ctx := context.Background()
	const foreign = "/var/lib/kubelet/pods/1234/volumes/kubernetes.io~empty-dir/certs.d/99-regnorm.toml"
	token := http.Header{"Authorization": {"Bearer " + testReportToken}}
	attack := cache.NodeReport{Node: "worker-1", Address: "10.0.0.1", ContainerdVersion: "v2.3.4", HostsDir: fleet.DefaultHostsDir, ConfigVersion: 3}
	for name, set := range map[string]func(*cache.NodeReport){
		"a reason and a drop-in": func(r *cache.NodeReport) {
			r.Reason, r.DropIn = "a drop-in fixing it is written to "+foreign+": restart containerd", foreign
		},
		"a reason naming a path": func(r *cache.NodeReport) { r.Reason = "config_path must be " + foreign },
		"a foreign drop-in":      func(r *cache.NodeReport) { r.DropIn = foreign },
	} {
		rep := attack
		set(&rep)
		if r := h.postReport(t, rep, token); r.status != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", name, r.status)
		}
	}

	dropIn := "/etc/containerd/conf.d/99-regnorm.toml"
	genuine := attack
	genuine.Node, genuine.ConfigPath, genuine.DropIn = "worker-2", "/etc/containerd/certs.d:/etc/docker/certs.d", dropIn
	genuine.Reasons = []containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}, {Code: containerdcfg.DropInWritten, Path: dropIn}}
	if err := h.reporter().ReportNode(ctx, genuine); err != nil {
		t.Fatal(err)
	}
	// Stored by an older regnorm, which kept a report's words.
	old := attack
	old.Node, old.Address, old.Reason, old.Fix, old.ReportedAt = "worker-3", "10.0.0.3", "restart containerd with "+foreign, "[plugins.evil]", time.Now()
	older := old
	older.Node, older.Address, older.Reason, older.Fix, older.DropIn = "worker-4", "10.0.0.4", "", "", foreign
	for _, rep := range []cache.NodeReport{old, older} {
		if err := h.store.PutNodeReport(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}

	want := `config_path is the list "/etc/containerd/certs.d:/etc/docker/certs.d": containerd 2.3 pulls through the transfer service, which reads it as one directory, so no hosts.toml is read; ` +
		`a drop-in fixing it is written to "/etc/containerd/conf.d/99-regnorm.toml": restart containerd to apply it (systemctl restart containerd)`
	byNode := map[string]fleet.NodeStatus{}
	for _, n := range h.nodes(t) {
		byNode[n.Node] = n
	}
	if len(byNode) != 2 || byNode["worker-2"].NodeConfig == nil || byNode["worker-3"].NodeConfig == nil {
		t.Fatalf("fleet view: %+v, want worker-2 and worker-3", byNode)
	}
	if got := byNode["worker-2"].NodeConfig.Reason; got != want {
		t.Errorf("worker-2's reason:\n%s\nwant\n%s", got, want)
	}
	if got := byNode["worker-3"].NodeConfig; got.Reason != "" || !strings.HasSuffix(got.Fix, "[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'") {
		t.Errorf("worker-3, stored with words: reason %q, fix %q; want no reason, and regnorm's fix", got.Reason, got.Fix)
	}
	page := string(h.do(t, http.MethodGet, "/status", nil).body)
	if !strings.Contains(page, "a drop-in fixing it is written to &#34;/etc/containerd/conf.d/99-regnorm.toml&#34;: restart containerd") {
		t.Errorf("the status page does not say, in regnorm's words, where the drop-in is written")
	}
	for place, body := range map[string]string{"/status": page, "/api/v1/nodes": string(h.do(t, http.MethodGet, "/api/v1/nodes", nil).body)} {
		if strings.Contains(body, "kubelet") || strings.Contains(body, "evil") {
			t.Errorf("%s shows words or a path a report brought", place)
		}
	}
}

// viewedNode is a node of GET /api/v1/nodes, as an operator's script reads
// it.
type viewedNode struct {
	Node              string `json:"node"`
	Address           string `json:"address"`
	AddressSharedBy   int    `json:"addressSharedBy"`
	PullsMatchedBy    string `json:"pullsMatchedBy"`
	ContainerdVersion string `json:"containerdVersion"`
	UserAgent         string `json:"userAgent"`
	Rules             string `json:"rules"`
	State             string `json:"state"`
	Pulls             int64  `json:"pulls"`
	OriginalDigest    int64  `json:"originalDigestPulls"`
	NodeConfigFix     *struct {
		Can string `json:"can"`
		Why string `json:"why"`
	} `json:"nodeConfigFix"`
}

// viewed is GET /api/v1/nodes by node name, or "@address" for a row of
// pulls that named no node.
func (h *harness) viewed(t *testing.T) map[string]viewedNode {
	t.Helper()
	r := h.do(t, http.MethodGet, "/api/v1/nodes", nil)
	var body struct {
		Nodes []viewedNode `json:"nodes"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil {
		t.Fatalf("nodes: %d %s", r.status, r.body)
	}
	out := map[string]viewedNode{}
	for _, n := range body.Nodes {
		key := n.Node
		if key == "" {
			key = "@" + n.Address
		}
		if _, dup := out[key]; dup {
			t.Fatalf("two rows for %s: %s", key, r.body)
		}
		out[key] = n
	}
	return out
}

// pullFrom makes a containerd manifest request (HEAD by tag) for ref with
// userAgent and, unless nil, these Regnorm-Node values.
func (h *harness) pullFrom(t *testing.T, ref, userAgent string, node ...string) {
	t.Helper()
	header := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {userAgent}}
	if node != nil {
		header["Regnorm-Node"] = node // the name node-config writes into hosts.toml, as containerd sends it
	}
	if r := h.do(t, http.MethodHead, "/v2/library/"+ref, header); r.status != http.StatusOK {
		t.Fatalf("pull %s: %d", ref, r.status)
	}
}

// TestThreeNodesOneAddress: three nodes reach regnorm from one address (a
// shared egress, SNAT) and name themselves in Regnorm-Node, as the
// hosts.toml files node-config writes make containerd do. They are three
// rows, each with its own User-Agent, containerd version, rules, pulls and
// state (the one that has not pulled says so), each marked as sharing its
// address, and the status page lists all three with the note that pulls
// without the header cannot be told apart; regnorm_nodes counts the two
// that pulled, by their own versions.
func TestThreeNodesOneAddress(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/redis", "old", legacy, oneFile)
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	ctx := context.Background()
	for _, rep := range []cache.NodeReport{
		{Node: "node-a", Address: "127.0.0.1", ContainerdVersion: "v1.6.8", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2},
		{Node: "node-b", Address: "127.0.0.1", ContainerdVersion: "v1.6.20", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2},
		{Node: "node-c", Address: "127.0.0.1", ContainerdVersion: "v2.3.4", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 3},
	} {
		if err := h.reporter().ReportNode(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}
	h.pullFrom(t, "redis/manifests/old", "containerd/v1.6.8", "node-a")
	h.pullFrom(t, "app/manifests/v1", "containerd/v1.6.8", "node-a")
	h.pullFrom(t, "redis/manifests/old", "containerd/1.6.20~ds1", "node-b") // normalized for node-b's rules, then
	h.pullFrom(t, "redis/manifests/"+img.ManifestDigest.String(), "containerd/1.6.20~ds1", "node-b")

	got := h.viewed(t)
	want := map[string]viewedNode{
		"node-a": {Node: "node-a", Address: "127.0.0.1", AddressSharedBy: 3, PullsMatchedBy: "node header", ContainerdVersion: "1.6.8", UserAgent: "containerd/v1.6.8",
			Rules: "config-media-type,symlink-xattrs,zstd-media-type,index-sizes,layer-media-type,diff-ids", State: "uses the mirror", Pulls: 2},
		"node-b": {Node: "node-b", Address: "127.0.0.1", AddressSharedBy: 3, PullsMatchedBy: "node header", ContainerdVersion: "1.6.20", UserAgent: "containerd/1.6.20~ds1",
			Rules: "config-media-type,zstd-media-type,index-sizes,layer-media-type,diff-ids", State: "uses the mirror", Pulls: 2, OriginalDigest: 1},
		"node-c": {Node: "node-c", Address: "127.0.0.1", AddressSharedBy: 3, ContainerdVersion: "v2.3.4", Rules: "config-media-type,schema1,index-sizes,layer-media-type,diff-ids", State: "no pull seen yet"},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %+v, want node-a, node-b and node-c", got)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s:\n%+v\nwant\n%+v", name, got[name], w)
		}
	}

	page := html.UnescapeString(string(h.do(t, http.MethodGet, "/status", nil).body))
	for _, want := range []string{
		"uses the mirror</span>: 2 nodes", "no pull seen yet</span>: 1 node<",
		`<code class="name">node-a</code>`, `<code class="name">node-b</code>`, `<code class="name">node-c</code>`,
		"containerd/v1.6.8", "containerd/1.6.20~ds1", "(1 by an original digest)",
		"address shared by 3 nodes", "3 nodes share an address with another node", "Regnorm-Node", "cannot be told apart",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	h.built.fleet.Count()
	if got := h.metric(t, "regnorm_nodes", `containerd="1.6"`); got != 2 {
		t.Errorf("regnorm_nodes{containerd=1.6} = %v, want 2", got)
	}
	if got := h.metric(t, "regnorm_nodes", ""); got != 2 {
		t.Errorf("regnorm_nodes sums to %v, want 2", got)
	}
}

// TestSharedAddressNote: two nodes report one address and their pulls do
// not name them (hosts.toml files of an older node-config, or written by
// hand). The pulls are not given to either: they are a row of the address,
// and the three rows say that they share it, on the page too. A node alone
// at its address still gets the pulls from it, as before the header.
func TestSharedAddressNote(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	ctx := context.Background()
	for _, rep := range []cache.NodeReport{
		{Node: "node-x", Address: "127.0.0.1", ContainerdVersion: "v1.7.0", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2},
		{Node: "node-y", Address: "127.0.0.1", ContainerdVersion: "v1.7.0", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2},
	} {
		if err := h.reporter().ReportNode(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}
	h.pullFrom(t, "app/manifests/v1", "containerd/v1.7.2")
	got := h.viewed(t)
	if len(got) != 3 {
		t.Fatalf("rows %+v, want node-x, node-y and the address's", got)
	}
	for _, name := range []string{"node-x", "node-y"} {
		if n := got[name]; n.State != "no pull seen yet" || n.Pulls != 0 || n.AddressSharedBy != 3 {
			t.Errorf("%s: %+v, want no pull seen yet, its address shared by 3", name, n)
		}
	}
	if n := got["@127.0.0.1"]; n.State != "uses the mirror" || n.Pulls != 1 || n.ContainerdVersion != "1.7.2" || n.PullsMatchedBy != "address" || n.AddressSharedBy != 3 {
		t.Errorf("the address's row: %+v", n)
	}
	page := html.UnescapeString(string(h.do(t, http.MethodGet, "/status", nil).body))
	for _, want := range []string{"3 nodes share an address with another node", "cannot be told apart", "no node name", "pulls matched by address", "address shared by 3 nodes"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
}

// TestBadNodeHeaderFallsBackToAddress: a Regnorm-Node value that no report
// could carry as a node name (empty, over 253 bytes, a control character,
// not UTF-8), or two of them, is ignored: the pull is counted by its
// address, here for the one node reported there; a good value beside them,
// a node node-config reported on, is a node of its own.
func TestBadNodeHeaderFallsBackToAddress(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	for _, rep := range []cache.NodeReport{
		{Node: "node-r", Address: "127.0.0.1", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2},
		{Node: "node-s", ReadsHostsToml: true, HostsDir: fleet.DefaultHostsDir, ConfigVersion: 3},
	} {
		if err := h.reporter().ReportNode(context.Background(), rep); err != nil {
			t.Fatal(err)
		}
	}
	bad := [][]string{{""}, {strings.Repeat("n", 254)}, {"node\tr"}, {"node-\xff"}, {"node-r", "node-s"}}
	for _, values := range bad {
		h.pullFrom(t, "app/manifests/v1", "containerd/v1.7.2", values...)
	}
	h.pullFrom(t, "app/manifests/v1", "containerd/v2.3.4", "node-s")
	got := h.viewed(t)
	if len(got) != 2 {
		t.Fatalf("rows %+v, want node-r and node-s", got)
	}
	if n := got["node-r"]; n.Pulls != int64(len(bad)) || n.PullsMatchedBy != "address" || n.ContainerdVersion != "1.7.2" {
		t.Errorf("node-r: %+v, want the %d pulls with a bad header, by address", n, len(bad))
	}
	if n := got["node-s"]; n.Pulls != 1 || n.PullsMatchedBy != "node header" || n.ContainerdVersion != "2.3.4" {
		t.Errorf("node-s: %+v, want its one pull, by its header", n)
	}
}

// TestNodeNamesAreBounded: a client sending a new Regnorm-Node name with
// each pull (any client may send any name), more than fleet.MaxNodes of
// them, makes no rows: a name counts only for a node node-config reported
// on, so every pull is counted for the client's address, one row, and
// regnorm_nodes counts one node.
func TestNodeNamesAreBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	h.pullFrom(t, "app/manifests/v1", "containerd/v1.7.2") // the tag is cached
	const senders = 16
	total := fleet.MaxNodes + 500
	errs := make(chan error, senders)
	for s := range senders {
		go func() {
			for i := s; i < total; i += senders {
				req, _ := http.NewRequest(http.MethodHead, h.url+"/v2/library/app/manifests/v1", nil)
				req.Header.Set("User-Agent", fmt.Sprintf("containerd/v1.%d.0", i))
				req.Header.Set("Regnorm-Node", fmt.Sprintf("made-up-%d", i))
				resp, err := boundedClient.Do(req)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("pull %d: %d", i, resp.StatusCode)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	rows := h.viewed(t)
	if n, ok := rows["@127.0.0.1"]; len(rows) != 1 || !ok || n.Pulls != int64(total+1) {
		t.Fatalf("rows %+v, want one, of 127.0.0.1, with all %d pulls", rows, total+1)
	}
	h.built.fleet.Count()
	if got := h.metric(t, "regnorm_nodes", ""); got != 1 {
		t.Fatalf("regnorm_nodes sums to %v, want 1", got)
	}
}

// TestStatusPageListsEveryNode: the status page lists every node by state,
// the ones that have not pulled yet included, more than 20 of a state
// behind a summary line (<details>); for a node that does not use the
// mirror, whether node-config --fix could fix it (from its report's codes)
// and the lines to add.
func TestStatusPageListsEveryNode(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	ctx := context.Background()
	dropIn := "/etc/containerd/conf.d/99-regnorm.toml"
	reports := []cache.NodeReport{
		{Node: "fixable", Address: "10.0.1.1", ContainerdVersion: "v2.3.4", ConfigVersion: 3, ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d",
			Reasons: []containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}}},
		{Node: "legacy", Address: "10.0.1.2", ContainerdVersion: "v1.7.0", ConfigVersion: 2,
			Reasons: []containerdcfg.Reason{{Code: containerdcfg.LegacyMirrors, Section: "io.containerd.grpc.v1.cri"}}},
		{Node: "restart", Address: "10.0.1.3", ContainerdVersion: "v1.6.20", ConfigVersion: 2, DropIn: dropIn,
			Reasons: []containerdcfg.Reason{{Code: containerdcfg.NoConfigPath, Major: 1, Minor: 6}, {Code: containerdcfg.DropInWritten, Path: dropIn}}},
	}
	for i := range 25 {
		reports = append(reports, cache.NodeReport{Node: fmt.Sprintf("waiting-%02d", i), Address: fmt.Sprintf("10.0.2.%d", i), ContainerdVersion: "v1.7.0",
			ConfigVersion: 2, ReadsHostsToml: true})
	}
	reports = append(reports, cache.NodeReport{Node: "pulling", Address: "10.0.3.1", ConfigVersion: 2, ReadsHostsToml: true})
	for _, rep := range reports {
		rep.HostsDir = fleet.DefaultHostsDir
		if err := h.reporter().ReportNode(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}
	h.pullFrom(t, "app/manifests/v1", "containerd/v1.7.2", "pulling")

	got := h.viewed(t)
	for name, want := range map[string]string{"fixable": "may", "legacy": "cannot", "restart": "written"} {
		if n := got[name]; n.State != "does not use the mirror" || n.NodeConfigFix == nil || n.NodeConfigFix.Can != want {
			t.Errorf("%s: %+v, want --fix: %s", name, n, want)
		}
	}
	r := h.do(t, http.MethodGet, "/status", nil)
	page := html.UnescapeString(string(r.body))
	for _, want := range []string{
		"does not use the mirror</span>: 3 nodes</h3>",
		"<details><summary><span class=\"state-nopull\">no pull seen yet</span>: 25 nodes</summary>",
		"uses the mirror</span>: 1 node</h3>",
		`<code class="name">pulling</code>`,
		`<span class="fix-may">may fix it</span>`, "--fix (nodeConfig.fix.enabled) writes these lines as a drop-in",
		`<span class="fix-cannot">cannot fix it</span>`, "--fix cannot: the registry settings have legacy mirrors",
		`<span class="fix-written">written</span>`, `--fix wrote it: a drop-in fixing it is written to "` + dropIn + `": restart containerd`,
		"[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	for i := range 25 {
		if name := fmt.Sprintf(`<code class="name">waiting-%02d</code>`, i); !strings.Contains(page, name) {
			t.Errorf("the status page does not list %s", name)
		}
	}
	if strings.Contains(page, "share an address") {
		t.Error("the page says nodes share an address; none do")
	}
	if r.header.Get("Content-Security-Policy") != operator.StatusCSP {
		t.Errorf("CSP %q", r.header.Get("Content-Security-Policy"))
	}
}
