// Package maintain keeps the cache in shape while the proxy runs: it
// measures it, evicts what its policy says must go (at once when downloads
// take it past its size, else on an interval), and removes what writers that
// died left behind. It knows the cache only through Store, and no HTTP.
package maintain

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
)

// Store is what maintenance needs of the cache.
type Store interface {
	Upgrade(ctx context.Context) error
	Usage(ctx context.Context) (cache.Usage, error)
	CleanUploads(ctx context.Context, idle, lifetime time.Duration, now time.Time) (int, error)
	Evict(ctx context.Context, policy cache.EvictionPolicy, now time.Time) (cache.EvictionResult, error)
}

// Clock is the time maintenance goes by.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Options configure a Maintainer.
type Options struct {
	Store Store
	// Policy bounds the cache; the zero policy keeps everything, and
	// maintenance only measures.
	Policy cache.EvictionPolicy
	// Every is how often a pass runs. Default DefaultEvery.
	Every time.Duration
	// UploadIdle: an upload not written to for this long is a dead
	// process's. Default DefaultUploadIdle.
	UploadIdle time.Duration
	// UploadLifetime: a multipart upload started longer ago than this is
	// a dead writer's, whatever it last wrote (every writer ends within it).
	// Default DefaultUploadLifetime.
	UploadLifetime time.Duration
	Clock          Clock
	Metrics        *Metrics
	Log            *slog.Logger
}

// Maintainer runs the maintenance passes.
type Maintainer struct {
	opts         Options
	usage        atomic.Pointer[Usage]
	wake         chan struct{} // an ingest took the cache past its size
	sizeEstimate atomic.Int64  // blob bytes: last pass's count plus ingests since
	wakeAbove    atomic.Int64  // the estimate past which an ingest wakes a pass
}

// Usage is the cache's size as last measured, and when.
type Usage struct {
	cache.Usage
	At time.Time
}

// Defaults of Options' zero fields.
const (
	// DefaultEvery is how often a cache of one process is measured,
	// evicted and cleaned.
	DefaultEvery = time.Minute
	// DefaultUploadIdle is four times an upstream's default stall bound:
	// a live download writes more often.
	DefaultUploadIdle = 2 * time.Minute
	// DefaultUploadLifetime is a download's default time bound, and a
	// margin.
	DefaultUploadLifetime = 70 * time.Minute
)

// New is a Maintainer with opts; zero durations take their defaults.
func New(opts Options) *Maintainer {
	if opts.Every <= 0 {
		opts.Every = DefaultEvery
	}
	if opts.UploadIdle <= 0 {
		opts.UploadIdle = DefaultUploadIdle
	}
	if opts.UploadLifetime <= 0 {
		opts.UploadLifetime = DefaultUploadLifetime
	}
	m := &Maintainer{opts: opts, wake: make(chan struct{}, 1)}
	m.wakeAbove.Store(opts.Policy.MaxBytes)
	return m
}

// Usage is the last measurement; nil before the first.
func (m *Maintainer) Usage() *Usage { return m.usage.Load() }

// Run upgrades a cache of an earlier version once, then runs a pass every
// interval, and at once when an ingest takes the cache past its size, until
// ctx ends.
func (m *Maintainer) Run(ctx context.Context) {
	if err := m.opts.Store.Upgrade(ctx); err != nil && ctx.Err() == nil {
		m.opts.Log.Warn("upgrading the cache from an earlier version failed; rewritten configs it holds may be evicted", "error", err)
	}
	for {
		m.Once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-m.opts.Clock.After(m.opts.Every):
		}
	}
}

// Once evicts as the policy says (or, without one, only measures the
// cache), and removes what writers that died (a crash, a SIGKILL) left.
func (m *Maintainer) Once(ctx context.Context) {
	if n, err := m.opts.Store.CleanUploads(ctx, m.opts.UploadIdle, m.opts.UploadLifetime, m.opts.Clock.Now()); err != nil && ctx.Err() == nil {
		m.opts.Log.Warn("cleaning leftover uploads failed", "error", err)
	} else if n > 0 {
		m.opts.Log.Info("removed leftover uploads", "count", n)
	}
	u, err := m.evictOrMeasure(ctx)
	switch {
	case err == nil:
		m.usage.Store(&Usage{Usage: u, At: m.opts.Clock.Now()})
		m.sizeEstimate.Store(u.Bytes)
		m.wakeAbove.Store(wakeThreshold(m.opts.Policy.MaxBytes, u.Bytes))
		m.opts.Metrics.cacheBytes.Set(float64(u.Bytes))
		m.opts.Metrics.cacheBlobs.Set(float64(u.Blobs))
	case ctx.Err() == nil:
		m.opts.Log.Warn("maintaining the cache failed", "error", err)
	}
}

func (m *Maintainer) evictOrMeasure(ctx context.Context) (cache.Usage, error) {
	if m.opts.Policy.MaxBytes == 0 && m.opts.Policy.MaxAge == 0 {
		return m.opts.Store.Usage(ctx)
	}
	res, err := m.opts.Store.Evict(ctx, m.opts.Policy, m.opts.Clock.Now())
	if err != nil {
		return cache.Usage{}, err
	}
	m.opts.Metrics.evictions.Add(float64(res.Evicted))
	m.opts.Metrics.evictedBytes.Add(float64(res.Freed))
	m.opts.Metrics.pinnedBytes.WithLabelValues(pinKept).Set(float64(res.Pinned))
	m.opts.Metrics.pinnedBytes.WithLabelValues(pinOver).Set(float64(res.PinnedOver))
	if res.Evicted > 0 {
		m.opts.Log.Info("evicted from the cache", "blobs", res.Evicted, "bytes", res.Freed, "remaining_bytes", res.Remaining.Bytes)
	}
	return res.Remaining, nil
}

// wakeThreshold is the size past which an ingest wakes a pass: the limit,
// or, when the last pass could not get under it (every blob in use or
// within its grace), that much more again plus a tenth of the limit (at
// least 16 MiB): a pass lists the whole cache, and must not follow every
// download while nothing can go.
func wakeThreshold(limit, remaining int64) int64 {
	if remaining <= limit {
		return limit
	}
	return remaining + max(limit/10, 16<<20)
}

// Ingested counts a blob of size bytes that entered the cache, and wakes a
// pass when the cache has outgrown its size limit.
func (m *Maintainer) Ingested(size int64) {
	if m.opts.Policy.MaxBytes > 0 && m.sizeEstimate.Add(size) > m.wakeAbove.Load() {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// Metrics are the cache's size and evictions. NewMetrics builds them;
// whoever owns the registry registers Collectors.
type Metrics struct {
	cacheBytes   prometheus.Gauge
	cacheBlobs   prometheus.Gauge
	evictions    prometheus.Counter
	evictedBytes prometheus.Counter
	pinnedBytes  *prometheus.GaugeVec
}

// The states of regnorm_cache_pinned_bytes: kept by their pins, or pinned
// but past cache.maxPinnedSize (evictable as any blob).
const (
	pinKept = "kept"
	pinOver = "over_limit"
)

// NewMetrics builds the maintenance metrics, registered nowhere.
func NewMetrics() *Metrics {
	m := &Metrics{
		pinnedBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "regnorm_cache_pinned_bytes",
			Help: "Bytes of pinned blobs (variants admitted in Pods) in the cache at the last eviction pass: kept by their pins, or over_limit (past cache.maxPinnedSize, evictable).",
		}, []string{"state"}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_cache_size_bytes",
			Help: "Bytes of blobs in the cache, measured every minute.",
		}),
		cacheBlobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "regnorm_cache_objects",
			Help: "Blobs in the cache, measured every minute.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_cache_evictions_total",
			Help: "Blobs evicted from the cache by its size or age limit.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "regnorm_cache_evicted_bytes_total",
			Help: "Bytes of blobs evicted from the cache.",
		}),
	}
	for _, state := range []string{pinKept, pinOver} {
		m.pinnedBytes.WithLabelValues(state)
	}
	return m
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.cacheBytes, m.cacheBlobs, m.evictions, m.evictedBytes, m.pinnedBytes}
}
