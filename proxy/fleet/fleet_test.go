package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func newTestFleet(t *testing.T, reg prometheus.Registerer) *Fleet {
	t.Helper()
	nodes := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "regnorm_nodes", Help: "test"}, []string{"containerd"})
	reg.MustRegister(nodes)
	f, err := New(Options{Store: cache.New(inmemory.New()), Rules: ruleset.DefaultPolicy(), Clock: systemClock{},
		Nodes: nodes, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFleetIsBounded: however many addresses pull, the fleet remembers at
// most MaxNodes of them.
func TestFleetIsBounded(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	for i := range MaxNodes + 5000 {
		r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
		r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1234", i>>16&255, i>>8&255, i&255)
		f.SawPull(r, false)
	}
	if n := len(f.snapshot()); n != MaxNodes {
		t.Fatalf("%d nodes remembered, want %d", n, MaxNodes)
	}
}

// TestNodeVersionSeriesAreBounded: regnorm_nodes' versions come from
// clients' User-Agents; however many there are, its series are the
// versions ruleset knows, other and unknown, and every node is counted
// once.
func TestNodeVersionSeriesAreBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := newTestFleet(t, reg)
	nodes := 0
	pull := func(ua string) { // from a node of its own
		r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
		r.RemoteAddr = fmt.Sprintf("10.0.%d.%d:1234", nodes>>8, nodes&255)
		r.Header.Set("User-Agent", ua)
		f.SawPull(r, false)
		nodes++
	}
	for i := range 30 {
		for range 30 - i { // version 1.i is pulled by 30-i nodes
			pull(fmt.Sprintf("containerd/v1.%d.0", i))
		}
	}
	for range 7 {
		pull("crane/0.20")
	}
	f.Count()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, total, found := map[string]float64{}, 0.0, false
	for _, fam := range families {
		if fam.GetName() == "regnorm_nodes" {
			found = true
			for _, m := range fam.GetMetric() {
				series[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				total += m.GetGauge().GetValue()
			}
		}
	}
	if !found {
		t.Fatal("regnorm_nodes is not gathered")
	}
	want := map[string]float64{"1.0": 30, "1.1": 29, "1.2": 28, "1.3": 27, "1.4": 26, "1.5": 25, "1.6": 24, "1.7": 23,
		"2.0": 0, "2.1": 0, "2.2": 0, "2.3": 0, "other": 22 * 23 / 2, "unknown": 7} // other: versions 1.8-1.29
	if !maps.Equal(series, want) || total != 465+7 {
		t.Fatalf("series %v, want %v", series, want)
	}
}

// TestReportsCarryNoLookAlikes: what a report brings and the fleet view
// quotes (the node's name, its config_path, the drop-in's path) cannot
// pass for regnorm's words: a node's name is a DNS-1123 name, the paths
// printable ASCII, so no look-alike of a quote ends a quotation.
func TestReportsCarryNoLookAlikes(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	good := cache.NodeReport{Node: "worker-1.example", HostsDir: DefaultHostsDir, ConfigVersion: 3, ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d"}
	if err := f.Receive(context.Background(), good); err != nil {
		t.Fatalf("a plain report: %v", err)
	}
	for name, edit := range map[string]func(*cache.NodeReport){
		"a quote look-alike in configPath": func(r *cache.NodeReport) {
			r.ConfigPath = "/etc/containerd/certs.d\u201d is outdated. Run this: \u201c/x"
		},
		"non-ASCII in configPath":        func(r *cache.NodeReport) { r.ConfigPath = "/etc/containerd/c\u00e9rts.d" },
		"upper case in the node's name":  func(r *cache.NodeReport) { r.Node = "Worker-1" },
		"a space in the node's name":     func(r *cache.NodeReport) { r.Node = "worker 1 says run curl" },
		"a quote look-alike in the name": func(r *cache.NodeReport) { r.Node = "worker\u201d" },
		"words in containerdVersion":     func(r *cache.NodeReport) { r.ContainerdVersion = "2.3.4 \u2014 regnorm says: run node-config --fix" },
	} {
		rep := good
		edit(&rep)
		if err := f.Receive(context.Background(), rep); !errors.Is(err, ErrInvalidReport) {
			t.Errorf("%s: %v, want ErrInvalidReport", name, err)
		}
	}
}
