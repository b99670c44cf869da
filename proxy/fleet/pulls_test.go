package fleet

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// pullFrom is a manifest request from addr, with a User-Agent and, when
// node is not nil, Regnorm-Node headers.
func pullFrom(addr, ua string, node ...string) *http.Request {
	r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
	r.RemoteAddr = addr + ":1234"
	r.Header.Set("User-Agent", ua)
	for _, n := range node {
		r.Header.Add("Regnorm-Node", n)
	}
	return r
}

// gauge sums regnorm_nodes over its series, and says which are set.
func gauge(t *testing.T, reg *prometheus.Registry) (total float64, series map[string]float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series = map[string]float64{}
	for _, fam := range families {
		if fam.GetName() == "regnorm_nodes" {
			for _, m := range fam.GetMetric() {
				series[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				total += m.GetGauge().GetValue()
			}
		}
	}
	return total, series
}

func view(t *testing.T, f *Fleet) map[string]NodeStatus {
	t.Helper()
	nodes, err := f.View(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]NodeStatus{}
	for _, n := range nodes {
		key := n.Node
		if key == "" {
			key = "@" + n.Address
		}
		if _, dup := out[key]; dup {
			t.Fatalf("two rows for %s: %+v", key, nodes)
		}
		out[key] = n
	}
	return out
}

// TestPullsAreMatchedByNodeHeader: three nodes pulling from one address,
// each naming itself in Regnorm-Node, are three nodes, each with its own
// User-Agent, version and pulls; one node pulling from two addresses is
// one node; regnorm_nodes counts them so (3, by their own versions).
func TestPullsAreMatchedByNodeHeader(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := newTestFleet(t, reg)
	reportNodes(t, f, "node-a", "node-b", "node-c")
	for range 3 {
		f.SawPull(pullFrom("10.0.0.1", "containerd/v1.6.8", "node-a"), false)
	}
	f.SawPull(pullFrom("10.0.0.1", "containerd/1.6.20~ds1", "node-b"), true)
	f.SawPull(pullFrom("10.0.0.1", "containerd/v2.3.4", "node-c"), false)
	f.SawPull(pullFrom("10.0.0.2", "containerd/v2.3.4", "node-c"), false) // node-c moved

	got := view(t, f)
	want := map[string]struct {
		version, addr string
		pulls, byOrig int64
	}{
		"node-a": {"1.6.8", "10.0.0.1", 3, 0},
		"node-b": {"1.6.20", "10.0.0.1", 1, 1},
		"node-c": {"2.3.4", "10.0.0.2", 2, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("rows: %+v, want node-a, node-b and node-c", got)
	}
	for name, w := range want {
		n := got[name]
		if n.ContainerdVersion != w.version || n.Address != w.addr || n.Pulls != w.pulls || n.OriginalDigestPulls != w.byOrig ||
			n.State != StateUses || n.PullsMatchedBy != MatchedByHeader {
			t.Errorf("%s: %+v, want containerd %s from %s, %d pulls (%d by an original digest), matched by the header", name, n, w.version, w.addr, w.pulls, w.byOrig)
		}
	}
	if got["node-a"].AddressSharedBy != 2 || got["node-b"].AddressSharedBy != 2 || got["node-c"].AddressSharedBy != 0 {
		t.Errorf("address shared by: a %d, b %d, c %d; want 2, 2 (10.0.0.1) and 0 (10.0.0.2)",
			got["node-a"].AddressSharedBy, got["node-b"].AddressSharedBy, got["node-c"].AddressSharedBy)
	}

	f.Count()
	total, series := gauge(t, reg)
	if total != 3 || series["1.6"] != 2 || series["2.3"] != 1 {
		t.Fatalf("regnorm_nodes: %v (total %v), want 1.6: 2, 2.3: 1", series, total)
	}
}

// TestBadNodeHeaderFallsBackToAddress: a Regnorm-Node value that is not a
// node name a report could carry (empty, over 253 bytes, a control
// character, not UTF-8), or more than one value, is ignored: the pull is
// counted by its address, as one without the header.
func TestBadNodeHeaderFallsBackToAddress(t *testing.T) {
	t.Parallel()
	for name, values := range map[string][]string{
		"empty":          {""},
		"too long":       {strings.Repeat("n", 254)},
		"a tab":          {"node\ta"},
		"a newline":      {"node\na"},
		"not UTF-8":      {"node-\xff"},
		"two values":     {"node-a", "node-b"},
		"an escape code": {"\x1b[31mnode"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newTestFleet(t, prometheus.NewRegistry())
			f.SawPull(pullFrom("10.0.0.7", "containerd/v1.6.8", values...), false)
			f.SawPull(pullFrom("10.0.0.7", "containerd/v1.6.8"), false)
			got := view(t, f)
			n, ok := got["@10.0.0.7"]
			if len(got) != 1 || !ok || n.Pulls != 2 || n.PullsMatchedBy != MatchedByAddress {
				t.Fatalf("rows %+v, want one of address 10.0.0.7 with both pulls", got)
			}
		})
	}
	// The bound is a report's: a name of 253 bytes is one.
	f := newTestFleet(t, prometheus.NewRegistry())
	long := strings.Repeat("n", 253)
	reportNodes(t, f, long)
	f.SawPull(pullFrom("10.0.0.7", "containerd/v1.6.8", long), false)
	if got := view(t, f); got[long].Pulls != 1 {
		t.Fatalf("a 253-byte name: %+v", got)
	}
}

// TestMadeUpNodeNamesMakeNoRows: a Regnorm-Node name counts a pull for
// its node only when node-config reported on that node (a report needs the
// report token): however many names one client makes up, its pulls are
// one row, of its address, and regnorm_nodes counts one node.
func TestMadeUpNodeNamesMakeNoRows(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := newTestFleet(t, reg)
	reportNodes(t, f, "worker-1")
	f.SawPull(pullFrom("10.0.0.9", "containerd/v1.6.8", "worker-1"), false)
	for i := range MaxNodes + 5000 {
		f.SawPull(pullFrom("10.0.0.1", fmt.Sprintf("containerd/v1.%d.0", i), fmt.Sprintf("node-%d", i)), false)
	}
	got := view(t, f)
	if len(got) != 2 || got["@10.0.0.1"].Pulls != MaxNodes+5000 || got["worker-1"].Pulls != 1 || got["worker-1"].State != StateUses {
		t.Fatalf("rows %+v, want worker-1's and one of 10.0.0.1 with every made-up pull", got)
	}
	f.Count()
	if total, _ := gauge(t, reg); total != 2 {
		t.Fatalf("regnorm_nodes sums to %v, want 2", total)
	}
}

// reportNodes has node-config report on each of names, as a node that
// reads the hosts.toml files.
func reportNodes(t *testing.T, f *Fleet, names ...string) {
	t.Helper()
	for _, name := range names {
		if err := f.Receive(context.Background(), cache.NodeReport{Node: name, HostsDir: DefaultHostsDir, ConfigVersion: 3, ReadsHostsToml: true}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSharedAddresses: nodes whose reports name one address share it;
// pulls from there that name no node go to the one report of their
// address, but not when several reports share it (nothing tells whose they
// are) nor when that report's node names itself in its pulls (they are
// another client's): then they are the address's own row.
func TestSharedAddresses(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	ctx := context.Background()
	report := func(node, addr string) {
		t.Helper()
		if err := f.Receive(ctx, cache.NodeReport{Node: node, Address: addr, HostsDir: DefaultHostsDir, ConfigVersion: 3, ReadsHostsToml: true}); err != nil {
			t.Fatal(err)
		}
	}
	report("alone", "10.0.0.1")  // pulls without the header: its own
	report("snat-1", "10.0.0.2") // three nodes behind one address,
	report("snat-2", "10.0.0.2") // pulling without the header
	report("snat-3", "10.0.0.2") //
	report("named", "10.0.0.3")  // pulls with the header, and another
	f.SawPull(pullFrom("10.0.0.1", "containerd/v1.6.8"), false)
	f.SawPull(pullFrom("10.0.0.2", "containerd/v1.7.0"), false)
	f.SawPull(pullFrom("10.0.0.3", "containerd/v2.3.4", "named"), false)
	f.SawPull(pullFrom("10.0.0.3", "containerd/v1.6.8"), false)

	got := view(t, f)
	want := map[string]struct {
		state, version, matched string
		shared                  int
	}{
		"alone":     {StateUses, "1.6.8", MatchedByAddress, 0},
		"snat-1":    {StateNoPull, "", "", 4},
		"snat-2":    {StateNoPull, "", "", 4},
		"snat-3":    {StateNoPull, "", "", 4},
		"@10.0.0.2": {StateUses, "1.7.0", MatchedByAddress, 4},
		"named":     {StateUses, "2.3.4", MatchedByHeader, 2},
		"@10.0.0.3": {StateUses, "1.6.8", MatchedByAddress, 2},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %+v, want %d", got, len(want))
	}
	for key, w := range want {
		n := got[key]
		if n.State != w.state || n.ContainerdVersion != w.version || n.PullsMatchedBy != w.matched || n.AddressSharedBy != w.shared {
			t.Errorf("%s: state %q, containerd %q, matched by %q, address shared by %d; want %q, %q, %q, %d",
				key, n.State, n.ContainerdVersion, n.PullsMatchedBy, n.AddressSharedBy, w.state, w.version, w.matched, w.shared)
		}
	}
}

// TestFixOutlook: for a node whose containerd does not read the hosts.toml
// files, the view says whether node-config --fix can fix it, from the
// report's codes. Without --fix's own codes (node-config ran without it),
// it says "cannot" only where containerdcfg.DropIn refuses, checked on
// real configurations; and "may" wherever DropIn writes a drop-in.
func TestFixOutlook(t *testing.T) {
	t.Parallel()
	const dir = "/etc/containerd/certs.d"
	drop := "/etc/containerd/conf.d/" + containerdcfg.DropInName
	configs := []struct {
		name, toml string
		version    containerdcfg.Version
		want       string
	}{
		{"2.3, config_path a list, drop-ins imported", "version = 3\nimports = [\"CONFD/*.toml\"]\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n",
			containerdcfg.Version{Major: 2, Minor: 3, Known: true}, FixMay},
		{"2.3, no drop-ins imported", "version = 3\n", containerdcfg.Version{Major: 2, Minor: 3, Known: true}, FixMay},
		{"1.6, CRI settings of its own", "version = 2\nimports = [\"CONFD/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.9\"\n",
			containerdcfg.Version{Major: 1, Minor: 6, Known: true}, FixMay},
		{"1.6, a version 1 configuration", "imports = [\"CONFD/*.toml\"]\n[plugins.cri]\n  sandbox_image = \"pause:3.9\"\n",
			containerdcfg.Version{Major: 1, Minor: 6, Known: true}, FixCannot},
		{"version unknown", "version = 3\nimports = [\"CONFD/*.toml\"]\n", containerdcfg.Version{}, FixCannot},
		{"legacy mirrors", "version = 2\nimports = [\"CONFD/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			containerdcfg.Version{Major: 1, Minor: 7, Known: true}, FixCannot},
	}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			confd := t.TempDir()
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, []byte(strings.ReplaceAll(c.toml, "CONFD", confd)), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := containerdcfg.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			// The report node-config sends without --fix.
			v := containerdcfg.Check(cfg, c.version, dir)
			if v.Reads {
				t.Fatal("containerd reads the hosts.toml files")
			}
			got := fixOutlook(cache.NodeReport{ConfigVersion: cfg.PluginsVersion(c.version), ConfigPath: v.ConfigPath, Reasons: v.Reasons})
			_, _, dropErr := containerdcfg.DropIn(cfg, c.version, dir)
			if got == nil || got.Can != c.want || got.Why == "" {
				t.Fatalf("outlook %+v, want %s (DropIn: %v)", got, c.want, dropErr)
			}
			if got.Can == FixCannot && dropErr == nil {
				t.Fatalf("says --fix cannot (%s), but DropIn writes a drop-in", got.Why)
			}
			if dropErr == nil && got.Can != FixMay {
				t.Fatalf("DropIn writes a drop-in, and the outlook is %+v", got)
			}
		})
	}

	// What --fix did says it.
	for _, c := range []struct {
		reasons []containerdcfg.Reason
		want    string
		words   string
	}{
		{[]containerdcfg.Reason{{Code: containerdcfg.NoConfigPath, Major: 1, Minor: 6}, {Code: containerdcfg.DropInWritten, Path: drop}}, FixWritten, "restart containerd"},
		{[]containerdcfg.Reason{{Code: containerdcfg.NoConfigPath, Major: 1, Minor: 6}, {Code: containerdcfg.FixRefused, Why: containerdcfg.NoDropInDir}}, FixCannot, "imports no drop-in directory"},
		{[]containerdcfg.Reason{{Code: containerdcfg.OtherConfigPath}, {Code: containerdcfg.FixForeignFile, Path: drop}}, FixCannot, "not written by regnorm"},
		{[]containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}, {Code: containerdcfg.DropInNoFix, Why: containerdcfg.ConfigPathList, Major: 2, Minor: 3, Path: drop}}, FixCannot, "would not fix it"},
		{[]containerdcfg.Reason{{Code: containerdcfg.NoConfigPath, Major: 1, Minor: 6}, {Code: containerdcfg.FixWriteFailed, Path: drop}}, FixFailed, "could not write"},
		{[]containerdcfg.Reason{{Code: containerdcfg.ConfigUnreadable}}, FixCannot, "cannot read"},
	} {
		got := fixOutlook(cache.NodeReport{ConfigVersion: 2, Reasons: c.reasons})
		if got == nil || got.Can != c.want || !strings.Contains(got.Why, c.words) {
			t.Errorf("%v: %+v, want %s saying %q", c.reasons, got, c.want, c.words)
		}
	}

	// In the view: a node that reads the files has no outlook.
	f := newTestFleet(t, prometheus.NewRegistry())
	ctx := context.Background()
	for _, rep := range []cache.NodeReport{
		{Node: "reads", HostsDir: DefaultHostsDir, ConfigVersion: 3, ReadsHostsToml: true},
		{Node: "list", HostsDir: DefaultHostsDir, ConfigVersion: 3, ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d",
			Reasons: []containerdcfg.Reason{{Code: containerdcfg.ConfigPathList, Major: 2, Minor: 3}}},
	} {
		if err := f.Receive(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}
	got := view(t, f)
	if got["reads"].NodeConfigFix != nil || got["list"].State != StateDoesNot || got["list"].NodeConfigFix == nil || got["list"].NodeConfigFix.Can != FixMay {
		t.Fatalf("reads: %+v; list: %s, %+v", got["reads"].NodeConfigFix, got["list"].State, got["list"].NodeConfigFix)
	}
}

// TestFleetFixFitsTheFile: the lines the fleet view says to change are
// those the node's configuration needs as it is: a registry table to add
// where there is none (followed, containerd then reads the hosts
// directory), and where the file has the table already (as `containerd
// config default` writes it, 1.6.20 and 2.3.4), never the table again,
// which would make containerd refuse the file.
func TestFleetFixFitsTheFile(t *testing.T) {
	t.Parallel()
	const dir = DefaultHostsDir
	ctx := context.Background()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "internal", "containerdcfg", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, c := range []struct {
		name, toml string
		version    containerdcfg.Version
		hasTable   bool
	}{
		{"1.6.20, config default", read("default-1.6.20.toml"), containerdcfg.Version{Major: 1, Minor: 6, Patch: 20, Known: true}, true},
		{"2.3.4, config default", read("default-2.3.4.toml"), containerdcfg.Version{Major: 2, Minor: 3, Patch: 4, Known: true}, true},
		{"1.6.20, no registry table", "version = 2\n", containerdcfg.Version{Major: 1, Minor: 6, Patch: 20, Known: true}, false},
		{"2.3.4, no registry table", "version = 3\n", containerdcfg.Version{Major: 2, Minor: 3, Patch: 4, Known: true}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, []byte(c.toml), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := containerdcfg.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			v := containerdcfg.Check(cfg, c.version, dir)
			f := newTestFleet(t, prometheus.NewRegistry())
			rep := cache.NodeReport{Node: "worker-1", HostsDir: dir, ConfigVersion: cfg.PluginsVersion(c.version), ConfigPath: v.ConfigPath, Reasons: v.Reasons}
			if err := f.Receive(ctx, rep); err != nil {
				t.Fatal(err)
			}
			nodes, err := f.View(ctx)
			if err != nil || len(nodes) != 1 || nodes[0].NodeConfig == nil {
				t.Fatalf("view: %v, %+v", err, nodes)
			}
			fix := nodes[0].NodeConfig.Fix
			if c.hasTable {
				if strings.HasPrefix(fix, "Add these lines") || !strings.Contains(fix, "do not add that table again") {
					t.Fatalf("for a file that has the registry table, the fix is\n%s", fix)
				}
				return
			}
			if err := regtest.FollowAdvice(strings.Replace(fix, "containerd's configuration file", path, 1)); err != nil {
				t.Fatalf("following %q: %v", fix, err)
			}
			cfg, err = containerdcfg.Load(path)
			if err != nil {
				t.Fatalf("the file after the fix: %v", err)
			}
			if v := containerdcfg.Check(cfg, c.version, dir); !v.Reads {
				t.Fatalf("after the fix %q, containerd reads no hosts.toml: %+v", fix, v.Reasons)
			}
		})
	}
}

// TestRuleSetsOfTheFleet: the fleet's rule sets are those of the
// containerd versions that pulled (by User-Agent, one a set however many
// nodes share it) and of the reported nodes that read the hosts.toml
// files; a client that names no containerd version and a node that does
// not use the mirror add none.
func TestRuleSetsOfTheFleet(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	f.SawPull(pullFrom("10.0.0.1", "containerd/v1.6.8"), false)
	f.SawPull(pullFrom("10.0.0.2", "containerd/v1.6.7"), false) // 1.6.8's rules
	f.SawPull(pullFrom("10.0.0.3", "curl/8.0"), false)
	ctx := context.Background()
	for _, rep := range []cache.NodeReport{
		{Node: "uses", ContainerdVersion: "v2.3.4", HostsDir: DefaultHostsDir, ConfigVersion: 3, ReadsHostsToml: true},
		{Node: "does-not", ContainerdVersion: "v1.4.0", HostsDir: DefaultHostsDir, ConfigVersion: 2},
	} {
		if err := f.Receive(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}
	got, err := f.RuleSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	policy := ruleset.DefaultPolicy()
	want := []ruleset.Set{policy.ForVersion(containerdcfg.ParseVersion("1.6.8")).Rules, policy.ForVersion(containerdcfg.ParseVersion("2.3.4")).Rules}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		keys := func(sets []ruleset.Set) (k []string) {
			for _, s := range sets {
				k = append(k, s.Key())
			}
			return k
		}
		t.Fatalf("rule sets: %q, want 1.6.8's and 2.3.4's: %q", keys(got), keys(want))
	}
}
