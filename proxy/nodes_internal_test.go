package proxy

import (
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestFleetIsBounded: however many addresses pull, the fleet remembers at
// most maxNodes of them.
func TestFleetIsBounded(t *testing.T) {
	t.Parallel()
	f := newFleet(realClock{}, time.Hour)
	for i := range maxNodes + 5000 {
		r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
		r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1234", i>>16&255, i>>8&255, i&255)
		f.sawPull(r, false)
	}
	if n := len(f.snapshot()); n != maxNodes {
		t.Fatalf("%d nodes remembered, want %d", n, maxNodes)
	}
}

// TestNodeVersionSeriesAreBounded: regnorm_nodes' versions come from
// clients' User-Agents; however many there are, its series are the
// versions ruleset knows, other and unknown, and every node is counted
// once.
func TestNodeVersionSeriesAreBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	u, _ := url.Parse("http://127.0.0.1:1")
	s, err := New(Options{Store: cache.New(inmemory.New()), Upstreams: []upstream.Config{{Name: "docker.io", URL: u}}, DefaultUpstream: "docker.io",
		Metrics: NewMetrics(reg), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	nodes := 0
	pull := func(ua string) { // from a node of its own
		r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
		r.RemoteAddr = fmt.Sprintf("10.0.%d.%d:1234", nodes>>8, nodes&255)
		r.Header.Set("User-Agent", ua)
		s.fleet.sawPull(r, false)
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
	s.countNodesOnce()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, total := map[string]float64{}, 0.0
	for _, f := range families {
		if f.GetName() == "regnorm_nodes" {
			for _, m := range f.GetMetric() {
				series[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				total += m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{"1.0": 30, "1.1": 29, "1.2": 28, "1.3": 27, "1.4": 26, "1.5": 25, "1.6": 24, "1.7": 23,
		"2.0": 0, "2.1": 0, "2.2": 0, "2.3": 0, "other": 22 * 23 / 2, "unknown": 7} // other: versions 1.8-1.29
	if !maps.Equal(series, want) || total != 465+7 {
		t.Fatalf("series %v, want %v", series, want)
	}
}
