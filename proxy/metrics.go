package proxy

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/premade"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// Metrics are the proxy's Prometheus metrics. Build them once with
// NewMetrics and pass them in Options; nothing is registered globally.
type Metrics struct {
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	cacheRequests   *prometheus.CounterVec
	servedBytes     *prometheus.CounterVec
	upstream        *upstream.Metrics
	fetch           *blobfetch.Metrics
	maintain        *maintain.Metrics
	replicas        *replicas.Metrics
	staleServes     *prometheus.CounterVec
	nodes           *prometheus.GaugeVec

	rewrites          *prometheus.CounterVec
	rewriteErrors     *prometheus.CounterVec
	normalizeDuration prometheus.Histogram
	normalizedServed  prometheus.Counter
	unnormalizedPulls prometheus.Counter
	layersScanned     prometheus.Counter
	layersRepackaged  prometheus.Counter
	layersSkipped     *prometheus.CounterVec
	bytesScanned      prometheus.Counter
	bytesRepackaged   prometheus.Counter
	deadlineExceeded  prometheus.Counter
	normalizations    *prometheus.CounterVec
	rebuilds          prometheus.Counter
	layerWorkInflight prometheus.Gauge
	layerWorkQueued   prometheus.Gauge
	layerWorkRejected prometheus.Counter
	premadeVariants   *prometheus.CounterVec
	premadeQueued     prometheus.Gauge
	webhookImages     *prometheus.CounterVec
	webhookSeconds    prometheus.Histogram

	passwordChecksInflight prometheus.Gauge
	passwordChecksQueued   prometheus.Gauge
	passwordChecksRejected prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		upstream: upstream.NewMetrics(),
		fetch:    blobfetch.NewMetrics(),
		maintain: maintain.NewMetrics(),
		replicas: replicas.NewMetrics(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_http_requests_total",
			Help: "HTTP requests answered, by route, method (other for a method that is not standard) and status code.",
		}, []string{"route", "method", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "regnorm_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, body included, by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"route"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_cache_requests_total",
			Help: "Cache look-ups for client requests, by kind (manifest, blob, referrers) and result (hit, miss).",
		}, []string{"kind", "result"}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_served_bytes_total",
			Help: "Blob and manifest bytes sent to clients, by source (cache, upstream).",
		}, []string{"source"}),
		staleServes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_stale_serves_total",
			Help: "Tags and referrers lists answered from an expired cache record because upstream could not be reached, by upstream.",
		}, []string{"upstream"}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_nodes",
			Help: "Nodes that pulled through this regnorm within nodes.forgetAfter, by containerd minor version (those regnorm knows; other: another version; unknown: not containerd).",
		}, []string{"containerd"}),
		rewrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_rewrites_total",
			Help: "Changes made by normalization, by kind (config-media-type, child-manifest, symlink-xattrs, zstd-media-type, schema1, zstd-gzip, index-size, layer-media-type, diff-ids, gnu-sparse), counted once per normalized document.",
		}, []string{"kind"}),
		rewriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_rewrite_errors_total",
			Help: "Normalizations that failed, by reason: invalid (content refused, served untouched) or fetch (a config or child could not be read, request failed).",
		}, []string{"reason"}),
		normalizeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "regnorm_normalization_duration_seconds",
			Help:    "Time to normalize one manifest or index, blob fetches included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		normalizedServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_normalized_manifests_served_total",
			Help: "Answers to a manifest request by tag that gave a normalized manifest.",
		}),
		unnormalizedPulls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_unnormalized_digest_pulls_total",
			Help: "Pulls by the original digest of a manifest regnorm normalizes: they get the original, unfixed bytes.",
		}),
		layersScanned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layers_scanned_total",
			Help: "Layers read whole for a rule: scanned for xattrs on symlinks and GNU sparse entries (each layer digest once for the whole cache), or read for a diff ID.",
		}),
		layersRepackaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layers_repackaged_total",
			Help: "Layers written anew: repackaged without xattrs on symlinks and other special files, or with GNU sparse entries written as regular files, or recompressed with gzip (zstd to gzip).",
		}),
		layersSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_layers_skipped_total",
			Help: "Layers left untouched, by reason: not-tar (not a tar stream regnorm reads), too-large (decompresses beyond normalize.maxLayerSize, or rewritten would be larger than maxBlobSize), zstd-window (a zstd frame declares a window beyond normalize.maxZstdWindow) or amplifies (rewritten would be more than 8 times its size and 1 MiB).",
		}, []string{"reason"}),
		bytesScanned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layer_scanned_bytes_total",
			Help: "Compressed layer bytes scanned.",
		}),
		bytesRepackaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layer_repackaged_bytes_total",
			Help: "Compressed bytes of repackaged layers written.",
		}),
		deadlineExceeded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_normalization_deadline_exceeded_total",
			Help: "Requests by tag answered 503 with Retry-After because normalization was not done by the deadline (it goes on).",
		}),
		normalizations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_normalizations_total",
			Help: "Manifests and indexes normalized (computed, not served), by result: normalized, clean, invalid (served untouched), error (request failed).",
		}, []string{"result"}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layer_rebuilds_total",
			Help: "Repackaged layers rebuilt from their original after eviction.",
		}),
		layerWorkInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_layer_work_inflight",
			Help: "Layer scans, repackagings and recompressions running (at most normalize.maxLayerWork).",
		}),
		layerWorkQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_layer_work_queued",
			Help: "Layer scans, repackagings and recompressions waiting for a turn (at most normalize.maxQueuedLayerWork).",
		}),
		layerWorkRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_layer_work_rejected_total",
			Help: "Layer work refused because normalize.maxQueuedLayerWork pieces were already waiting: the request was answered 503 with Retry-After.",
		}),
		premadeVariants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_premade_variants_total",
			Help: "Variants made in the background for the fleet's other containerd versions after a pull by tag, by result: made, clean (the rules change nothing), dropped (an image not queued: normalize.premadeQueue full), busy (the layer work queue was full), error.",
		}, []string{"result"}),
		premadeQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_premade_queued",
			Help: "Images waiting for their pre-made variants (at most normalize.premadeQueue).",
		}),
		webhookImages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regnorm_webhook_images_total",
			Help: "Images of the Pods the admission webhook reviewed, by result: replaced (written as the fleet's variant), clean (the variant is the original, or the image names a variant already), pending (the variant was not ready within webhook.timeout, or every making slot was taken by other variants: made in the background, the Pod runs the original), skipped (by tag, an unmirrored registry, forwarded credentials, no containerd version of the fleet known, past 256 images, no slot to make a variant in nor room to make it in the background, its turn after webhook.timeout was spent, or a dry run without a recorded variant), error.",
		}, []string{"result"}),
		webhookSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "regnorm_webhook_admission_seconds",
			Help:    "How long the admission webhook took to answer an AdmissionReview.",
			Buckets: []float64{0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 15, 25},
		}),
		passwordChecksInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_password_checks_inflight",
			Help: "bcrypt comparisons of client passwords running (at most half of GOMAXPROCS, at least 1).",
		}),
		passwordChecksQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_password_checks_queued",
			Help: "bcrypt comparisons of client passwords waiting for a turn (at most 64).",
		}),
		passwordChecksRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_password_checks_rejected_total",
			Help: "Basic credentials not checked because 64 comparisons were already waiting, or 4000 had run in the last minute: the request was answered 503 with Retry-After.",
		}),
	}
	reg.MustRegister(m.normalizations, m.rebuilds, m.layerWorkInflight, m.layerWorkQueued, m.layerWorkRejected)
	reg.MustRegister(m.premadeVariants, m.premadeQueued)
	reg.MustRegister(m.webhookImages, m.webhookSeconds)
	reg.MustRegister(m.passwordChecksInflight, m.passwordChecksQueued, m.passwordChecksRejected)
	reg.MustRegister(m.maintain.Collectors()...)
	reg.MustRegister(m.layersScanned, m.layersRepackaged, m.layersSkipped, m.bytesScanned, m.bytesRepackaged, m.deadlineExceeded)
	reg.MustRegister(m.rewrites, m.rewriteErrors, m.normalizeDuration, m.normalizedServed, m.unnormalizedPulls)
	reg.MustRegister(m.requests, m.requestDuration, m.cacheRequests, m.servedBytes,
		m.staleServes, m.nodes)
	reg.MustRegister(m.upstream.Collectors()...)
	reg.MustRegister(m.fetch.Collectors()...)
	reg.MustRegister(m.replicas.Collectors()...)
	// Every label value known up front is there from the first scrape, so
	// that a dashboard panel (and a test) sees 0 rather than nothing.
	for _, kind := range []string{"config-media-type", "child-manifest", "symlink-xattrs", "zstd-media-type", "schema1", "zstd-gzip", "index-size", "layer-media-type", "diff-ids", "gnu-sparse"} {
		m.rewrites.WithLabelValues(kind)
	}
	for _, reason := range []string{"invalid", "fetch"} {
		m.rewriteErrors.WithLabelValues(reason)
	}
	for _, result := range []string{"normalized", "clean", "invalid", "error"} {
		m.normalizations.WithLabelValues(result)
	}
	for _, reason := range normalize.SkipReasons {
		m.layersSkipped.WithLabelValues(reason)
	}
	for _, kind := range []string{"manifest", "blob", "referrers"} {
		for _, result := range []string{"hit", "miss"} {
			m.cacheRequests.WithLabelValues(kind, result)
		}
	}
	for _, source := range []string{"cache", "upstream"} {
		m.servedBytes.WithLabelValues(source)
	}
	for _, route := range []string{routeBase, routeManifest, routeBlob, routeTags, routeReferrers, routeUpload, routeHealth, routeMetrics,
		routeReport, routeWarm, routeNodes, routeStatus, routeNotFound, routeTooLarge, routeForbidden} {
		m.requestDuration.WithLabelValues(route)
	}
	for _, v := range fleet.ContainerdVersions.Values() {
		m.nodes.WithLabelValues(v)
	}
	for _, route := range []string{routeManifest, routeBlob} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			m.requests.WithLabelValues(route, method, "200")
		}
	}
	return m
}

// preset creates the proxy's own series of one configured upstream (the
// upstream client presets its own).
func (m *Metrics) preset(upstream string) {
	m.staleServes.WithLabelValues(upstream)
	m.fetch.Preset(upstream)
}

// The parts' metrics, registered with the Server's by NewMetrics: cmd/proxy
// hands each part its own when it builds it.

// Upstream are the upstream clients' (upstream.Options.Metrics).
func (m *Metrics) Upstream() *upstream.Metrics { return m.upstream }

// Fetch are the blob fetcher's (blobfetch.Options.Metrics).
func (m *Metrics) Fetch() *blobfetch.Metrics { return m.fetch }

// Replicas are the replicas' (replicas.Options.Metrics).
func (m *Metrics) Replicas() *replicas.Metrics { return m.replicas }

// Maintain are cache maintenance's (maintain.Options.Metrics).
func (m *Metrics) Maintain() *maintain.Metrics { return m.maintain }

// Nodes is regnorm_nodes (fleet.Options.Nodes).
func (m *Metrics) Nodes() *prometheus.GaugeVec { return m.nodes }

// Mirror are the repository service's (mirror.Options.Metrics).
func (m *Metrics) Mirror() mirror.Metrics {
	return mirror.Metrics{CacheRequests: m.cacheRequests, StaleServes: m.staleServes, DeadlineExceeded: m.deadlineExceeded}
}

// Premade are the pre-made variants' (premade.Options.Metrics).
func (m *Metrics) Premade() premade.Metrics {
	return premade.Metrics{Variants: m.premadeVariants, Queued: m.premadeQueued}
}

// Webhook are the admission webhook's (webhook.Options.Metrics).
func (m *Metrics) Webhook() webhook.Metrics {
	return webhook.Metrics{Images: m.webhookImages, Seconds: m.webhookSeconds}
}

// Engine are the rule engine's (normalize.Options.Metrics).
func (m *Metrics) Engine() normalize.Metrics {
	return normalize.Metrics{Rewrites: m.rewrites, RewriteErrors: m.rewriteErrors, Normalizations: m.normalizations,
		NormalizeDuration: m.normalizeDuration, LayersScanned: m.layersScanned, LayersRepackaged: m.layersRepackaged,
		LayersSkipped: m.layersSkipped, BytesScanned: m.bytesScanned, BytesRepackaged: m.bytesRepackaged, Rebuilds: m.rebuilds,
		LayerWorkInflight: m.layerWorkInflight, LayerWorkQueued: m.layerWorkQueued, LayerWorkRejected: m.layerWorkRejected}
}
