package blobfetch

import "github.com/prometheus/client_golang/prometheus"

// Metrics count the downloads. NewMetrics builds them; whoever owns the
// registry registers Collectors.
type Metrics struct {
	inflightFetches  prometheus.Gauge
	queuedFetches    prometheus.Gauge
	fetchesRejected  prometheus.Counter
	fetchesAbandoned prometheus.Counter
	spoolBytes       prometheus.Gauge
	downloads        *prometheus.GaugeVec
}

// NewMetrics builds the download metrics, registered nowhere.
func NewMetrics() *Metrics {
	return &Metrics{
		inflightFetches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_upstream_inflight_fetches",
			Help: "Blob downloads from upstream in progress.",
		}),
		queuedFetches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_upstream_queued_fetches",
			Help: "Blob downloads waiting for a turn (at most maxDownloads run at once).",
		}),
		fetchesRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_upstream_fetches_rejected_total",
			Help: "Requests answered 503 because maxQueuedDownloads downloads were already waiting.",
		}),
		fetchesAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_upstream_fetches_abandoned_total",
			Help: "Blob downloads cancelled because no client was reading them any more.",
		}),
		spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_spool_bytes",
			Help: "Bytes reserved by the spool files of downloads in progress (at most spoolMaxSize).",
		}),
		downloads: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_upstream_downloads",
			Help: "Blob downloads not yet over, by upstream and state: running (holding one of the upstream's share of maxDownloads) or waiting (for the upstream's share, then for a global slot).",
		}, []string{"upstream", "state"}),
	}
}

// Preset creates the series of one configured upstream, so that a
// dashboard panel (and a test) sees 0 rather than nothing.
func (m *Metrics) Preset(upstream string) {
	for _, state := range []string{"running", "waiting"} {
		m.downloads.WithLabelValues(upstream, state)
	}
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.inflightFetches, m.queuedFetches, m.fetchesRejected, m.fetchesAbandoned, m.spoolBytes, m.downloads}
}
