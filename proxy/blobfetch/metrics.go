package blobfetch

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count the downloads. NewMetrics builds them; whoever owns the
// registry registers Collectors.
type Metrics struct {
	fetchesRejected  prometheus.Counter
	fetchesAbandoned prometheus.Counter
	spoolBytes       prometheus.Gauge
	downloads        *downloadGauges
}

// NewMetrics builds the download metrics, registered nowhere.
func NewMetrics() *Metrics {
	return &Metrics{
		fetchesRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_upstream_fetches_rejected_total",
			Help: "Requests answered 503 because maxDownloads + maxQueuedDownloads downloads were already running and waiting, or the upstream's share of them.",
		}),
		fetchesAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_upstream_fetches_abandoned_total",
			Help: "Blob downloads cancelled because no client was reading them any more.",
		}),
		spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_spool_bytes",
			Help: "Bytes reserved by the spool files of downloads in progress (at most spoolMaxSize).",
		}),
		downloads: newDownloadGauges(),
	}
}

// Preset creates the series of one configured upstream, so that a
// dashboard panel (and a test) sees 0 rather than nothing.
func (m *Metrics) Preset(upstream string) {
	m.downloads.mu.Lock()
	defer m.downloads.mu.Unlock()
	m.downloads.of(upstream)
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.fetchesRejected, m.fetchesAbandoned, m.spoolBytes, m.downloads}
}

// state is where a download stands: waiting for a turn, or running.
type state int

const (
	waiting state = iota
	running
)

func (s state) String() string { return [...]string{"waiting", "running"}[s] }

// downloadGauges count the downloads not yet over by upstream and state,
// and are scraped as one moment: a download moving from waiting to running
// is never seen in both states, nor one ending and the next starting as
// more than the bound lets run and wait together.
type downloadGauges struct {
	mu         sync.Mutex
	byUpstream map[string]*[2]int // by state; configured upstreams only

	running, waiting, downloads *prometheus.Desc
}

func newDownloadGauges() *downloadGauges {
	return &downloadGauges{
		byUpstream: map[string]*[2]int{},
		running: prometheus.NewDesc("regnorm_upstream_inflight_fetches",
			"Blob downloads from upstream in progress.", nil, nil),
		waiting: prometheus.NewDesc("regnorm_upstream_queued_fetches",
			"Blob downloads waiting for a turn (at most maxDownloads run at once).", nil, nil),
		downloads: prometheus.NewDesc("regnorm_upstream_downloads",
			"Blob downloads not yet over, by upstream and state: running (holding one of the upstream's share of maxDownloads) or waiting (for the upstream's share, then for a global slot).",
			[]string{"upstream", "state"}, nil),
	}
}

// of is upstream's counts. Called with d.mu held.
func (d *downloadGauges) of(upstream string) *[2]int {
	n, ok := d.byUpstream[upstream]
	if !ok {
		n = new([2]int)
		d.byUpstream[upstream] = n
	}
	return n
}

// queued counts a new download of upstream's, waiting for its turn.
func (d *downloadGauges) queued(upstream string) { d.count(upstream, func(n *[2]int) { n[waiting]++ }) }

// started moves one of upstream's downloads from waiting to running.
func (d *downloadGauges) started(upstream string) {
	d.count(upstream, func(n *[2]int) { n[waiting]--; n[running]++ })
}

// ended counts one of upstream's downloads out of s: it is over.
func (d *downloadGauges) ended(upstream string, s state) {
	d.count(upstream, func(n *[2]int) { n[s]-- })
}

func (d *downloadGauges) count(upstream string, change func(*[2]int)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	change(d.of(upstream))
}

func (d *downloadGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.running
	ch <- d.waiting
	ch <- d.downloads
}

func (d *downloadGauges) Collect(ch chan<- prometheus.Metric) {
	// Copied under the lock, sent after it: a slow scrape holds up no
	// download.
	d.mu.Lock()
	byUpstream := make(map[string][2]int, len(d.byUpstream))
	for upstream, n := range d.byUpstream {
		byUpstream[upstream] = *n
	}
	d.mu.Unlock()
	var total [2]int
	for upstream, n := range byUpstream {
		for s, v := range n {
			total[s] += v
			ch <- prometheus.MustNewConstMetric(d.downloads, prometheus.GaugeValue, float64(v), upstream, state(s).String())
		}
	}
	ch <- prometheus.MustNewConstMetric(d.running, prometheus.GaugeValue, float64(total[running]))
	ch <- prometheus.MustNewConstMetric(d.waiting, prometheus.GaugeValue, float64(total[waiting]))
}
