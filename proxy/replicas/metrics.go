package replicas

import "github.com/prometheus/client_golang/prometheus"

// Metrics count the work replicas ask of each other. NewMetrics builds
// them; whoever owns the registry registers Collectors.
type Metrics struct {
	asks    *prometheus.CounterVec
	served  *prometheus.CounterVec
	members prometheus.Gauge
}

// NewMetrics builds the replicas' metrics, registered nowhere.
func NewMetrics() *Metrics {
	m := &Metrics{
		asks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_replica_asks_total",
			Help: "Work asked of its owner replica, by kind (blob, manifest, variant) and outcome: ok (the owner did it), answer (the owner relayed the upstream's refusal), fallback (the owner failed, before or during its answer, and this replica did the work itself).",
		}, []string{"kind", "outcome"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_replica_served_total",
			Help: "Work done for other replicas as its owner, by kind and result (ok, error).",
		}, []string{"kind", "result"}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_replicas",
			Help: "Replicas this one knows, itself included.",
		}),
	}
	// Every series exists from the start, at zero: a dashboard (and a
	// test) tells "none" from "not exported".
	for _, kind := range []string{KindBlob, KindManifest, KindVariant} {
		for _, outcome := range []string{"ok", "answer", "fallback"} {
			m.asks.WithLabelValues(kind, outcome)
		}
		for _, result := range []string{"ok", "error"} {
			m.served.WithLabelValues(kind, result)
		}
	}
	return m
}

// Collectors are what to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.asks, m.served, m.members}
}

// Served counts work of kind done for another replica, as its owner.
func (s *Set) Served(kind string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.opts.Metrics.served.WithLabelValues(kind, result).Inc()
}
