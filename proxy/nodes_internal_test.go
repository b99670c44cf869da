package proxy

import (
	"fmt"
	"log/slog"
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
// clients' User-Agents; however many there are, the most common
// maxVersionLabels get a series and the rest count as other.
func TestNodeVersionSeriesAreBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	u, _ := url.Parse("http://127.0.0.1:1")
	s, err := New(Options{Store: cache.New(inmemory.New()), Upstreams: []upstream.Config{{Name: "docker.io", URL: u}}, DefaultUpstream: "docker.io",
		Metrics: NewMetrics(reg), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		for range 30 - i { // version 1.i is pulled by 30-i nodes
			r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
			r.RemoteAddr = fmt.Sprintf("10.0.%d.%d:1234", i, len(s.fleet.seen.Keys()))
			r.Header.Set("User-Agent", fmt.Sprintf("containerd/v1.%d.0", i))
			s.fleet.sawPull(r, false)
		}
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
	if len(series) != maxVersionLabels+1 || series["1.0"] != 30 || series["1.19"] != 11 || series["1.20"] != 0 || total != 465 {
		t.Fatalf("%d series (want %d), 1.0=%v 1.19=%v other=%v, total %v (want 465): %v",
			len(series), maxVersionLabels+1, series["1.0"], series["1.19"], series["other"], total, series)
	}
	if want := float64(10 * 11 / 2); series["other"] != want {
		t.Fatalf("other = %v, want %v (versions 1.20-1.29)", series["other"], want)
	}
}
