package upstream

import (
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count what is asked of the upstreams. NewMetrics builds them;
// whoever owns the registry registers Collectors.
type Metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	retries       *prometheus.CounterVec
	tokenFetches  *prometheus.CounterVec
	rateLimit     *prometheus.GaugeVec
	rateRemaining *prometheus.GaugeVec
	rateWindow    *prometheus.GaugeVec
	blobsTooLarge *prometheus.CounterVec
	bodyBytes     *prometheus.GaugeVec
	bodiesRefused *prometheus.CounterVec
	held          *prometheus.CounterVec
}

// NewMetrics builds the upstream metrics, registered nowhere.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_requests_total",
			Help: "Requests sent to upstream registries, by upstream and result: the HTTP status code (a code outside the usual ones as its class, 4xx, or other), or error.",
		}, []string{"upstream", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "regnorm_upstream_request_duration_seconds",
			Help:    "Time until upstream response headers, by upstream.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 10),
		}, []string{"upstream"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_retries_total",
			Help: "Upstream requests sent again after a failure that may pass, by upstream and reason (unreachable, stalled, truncated, or the HTTP status).",
		}, []string{"upstream", "reason"}),
		tokenFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_token_fetches_total",
			Help: "Bearer tokens fetched from upstream token services, by upstream and result (ok, error).",
		}, []string{"upstream", "result"}),
		rateLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_upstream_ratelimit_limit",
			Help: "Requests the upstream allows per window, from its RateLimit-Limit header (Docker Hub's pull budget), by upstream; NaN until it sends one.",
		}, []string{"upstream"}),
		rateRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_upstream_ratelimit_remaining",
			Help: "Requests left in the upstream's current window, from its RateLimit-Remaining header, by upstream; NaN until it sends one.",
		}, []string{"upstream"}),
		rateWindow: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_upstream_ratelimit_window_seconds",
			Help: "The upstream's rate-limit window (the w= of RateLimit-Limit), by upstream; NaN until it sends one.",
		}, []string{"upstream"}),
		blobsTooLarge: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_blobs_too_large_total",
			Help: "Blob downloads refused (announced) or stopped (sent) for being larger than the upstream's maxBlobSize, by upstream.",
		}, []string{"upstream"}),
		bodyBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_upstream_body_memory_bytes",
			Help: "Memory held by upstream answers being read whole (manifests, tag lists, token answers, error bodies), by upstream; bounded by maxUpstreamBodyMemory.",
		}, []string{"upstream"}),
		bodiesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_body_memory_refused_total",
			Help: "Upstream answers not read because the memory for them (maxUpstreamBodyMemory, or the upstream's share of it) was spent: the client got 503 with Retry-After, by upstream.",
		}, []string{"upstream"}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_upstream_held_requests_total",
			Help: "Manifest requests not sent because the upstream is held after a 429 or a RateLimit-Remaining of 0 (by this replica or another): a stale tag was served, or the client got 429 with Retry-After, by upstream.",
		}, []string{"upstream"}),
	}
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.retries, m.tokenFetches, m.rateLimit, m.rateRemaining, m.rateWindow, m.blobsTooLarge,
		m.bodyBytes, m.bodiesRefused, m.held}
}

// Retry counts a request sent again to upstream, and why: also a resumed
// download, which its owner sends.
func (m *Metrics) Retry(upstream, reason string) {
	m.retries.WithLabelValues(upstream, reason).Inc()
}

// preset creates the series of one configured upstream, so that a
// dashboard panel (and a test) sees 0 rather than nothing.
func (m *Metrics) preset(upstream string) {
	for _, result := range []string{"200", "error"} {
		m.requests.WithLabelValues(upstream, result)
	}
	for _, result := range []string{"ok", "error"} {
		m.tokenFetches.WithLabelValues(upstream, result)
	}
	m.duration.WithLabelValues(upstream)
	m.blobsTooLarge.WithLabelValues(upstream)
	m.bodyBytes.WithLabelValues(upstream)
	m.bodiesRefused.WithLabelValues(upstream)
	m.held.WithLabelValues(upstream)
	// Unknown until the upstream says: NaN, not a 0 that would read as an
	// exhausted budget.
	for _, g := range []*prometheus.GaugeVec{m.rateLimit, m.rateRemaining, m.rateWindow} {
		g.WithLabelValues(upstream).Set(math.NaN())
	}
}

// noteRateLimit records an upstream's RateLimit-Limit and
// RateLimit-Remaining headers ("100;w=21600"), when it sends them.
func (m *Metrics) noteRateLimit(upstream string, h http.Header) {
	if limit, window, ok := parseRateLimit(h.Get("RateLimit-Limit")); ok {
		m.rateLimit.WithLabelValues(upstream).Set(limit)
		if window > 0 {
			m.rateWindow.WithLabelValues(upstream).Set(window)
		}
	}
	if remaining, _, ok := parseRateLimit(h.Get("RateLimit-Remaining")); ok {
		m.rateRemaining.WithLabelValues(upstream).Set(remaining)
	}
}

// parseRateLimit reads "100;w=21600": a count and, optionally, its window
// in seconds.
func parseRateLimit(v string) (n, window float64, ok bool) {
	count, params, _ := strings.Cut(v, ";")
	c, err := strconv.ParseUint(strings.TrimSpace(count), 10, 53)
	if err != nil {
		return 0, 0, false
	}
	for _, p := range strings.Split(params, ";") {
		if w, found := strings.CutPrefix(strings.TrimSpace(p), "w="); found {
			if s, err := strconv.ParseUint(w, 10, 53); err == nil {
				window = float64(s)
			}
		}
	}
	return float64(c), window, true
}
