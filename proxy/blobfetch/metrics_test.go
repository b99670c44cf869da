package blobfetch

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// A scrape sees the downloads at one moment: while one download ends and
// the next starts, over and over, no scrape counts more than are alive,
// and the totals are the sums of the upstreams' series.
func TestDownloadGaugesAreOneMoment(t *testing.T) {
	m := NewMetrics()
	m.Preset("idle")
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)

	// The writer turns over until the scraper has looked often enough.
	const alive, scrapes = 2, 200
	d := m.downloads
	for range alive {
		d.queued("a")
		d.started("a")
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer wg.Wait()
	defer close(stop)
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			upstream := []string{"a", "b"}[i%2]
			d.ended("a", running) // one ends before the next is counted
			d.queued(upstream)
			d.started(upstream)
			d.ended(upstream, running)
			d.queued("a")
			d.started("a")
		}
	})
	for n := range scrapes {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var total, byUpstream float64
		seen := map[string]bool{}
		for _, f := range families {
			for _, s := range f.GetMetric() {
				switch v := s.GetGauge().GetValue(); f.GetName() {
				case "regnorm_upstream_inflight_fetches", "regnorm_upstream_queued_fetches":
					total += v
					seen[f.GetName()] = true
				case "regnorm_upstream_downloads":
					byUpstream += v
					labels := map[string]string{}
					for _, l := range s.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					seen[labels["upstream"]+"/"+labels["state"]] = true
				}
			}
		}
		if !seen["regnorm_upstream_inflight_fetches"] || !seen["regnorm_upstream_queued_fetches"] || !seen["idle/waiting"] || !seen["idle/running"] {
			t.Fatalf("a series is missing: %v", seen)
		}
		if total > alive || total != byUpstream {
			t.Fatalf("scrape %d: %v downloads running and waiting (at most %d alive), %v by upstream", n, total, alive, byUpstream)
		}
	}
}
