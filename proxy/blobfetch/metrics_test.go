package blobfetch

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// A scrape sees the downloads at one moment: while one download ends and
// the next starts, over and over, no scrape counts more than are alive,
// and the totals are the sums of the upstreams' series. Gauges read at two
// moments (as separate gauges are: Gather reads collectors in parallel)
// fail it within a few hundred scrapes; a collector that read its counts
// under two locks back to back would pass it more often than not: that
// one lock is read is the code's to show.
func TestDownloadGaugesAreOneMoment(t *testing.T) {
	m := NewMetrics()
	m.Preset("idle")
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)

	// The writer turns over, letting the scraper in between its steps,
	// until both have done enough.
	const alive, enough = 2, 500
	d := m.downloads
	for range alive {
		d.queued("a")
		d.started("a")
	}
	var wg sync.WaitGroup
	var turns atomic.Int64
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
			for _, step := range []func(){
				func() { d.ended("a", running) }, // one ends before the next is counted
				func() { d.queued(upstream) },
				func() { d.started(upstream) },
				func() { d.ended(upstream, running) },
				func() { d.queued("a") },
				func() { d.started("a") },
			} {
				step()
				runtime.Gosched()
			}
			turns.Add(1)
		}
	})
	for n := 0; n < enough || turns.Load() < enough; n++ {
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
