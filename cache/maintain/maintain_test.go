package maintain

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
)

// fullCache is a cache that stays at its size: nothing can be evicted.
type fullCache struct {
	bytes              int64
	passes             int
	pinned, pinnedOver int64
}

func (c *fullCache) Upgrade(context.Context) error { return nil }
func (c *fullCache) Usage(context.Context) (cache.Usage, error) {
	return cache.Usage{Bytes: c.bytes}, nil
}
func (c *fullCache) CleanUploads(context.Context, time.Duration, time.Duration, time.Time) (int, error) {
	return 0, nil
}
func (c *fullCache) Evict(context.Context, cache.EvictionPolicy, time.Time) (cache.EvictionResult, error) {
	c.passes++
	return cache.EvictionResult{Remaining: cache.Usage{Bytes: c.bytes}, Pinned: c.pinned, PinnedOver: c.pinnedOver}, nil
}

type fixedClock struct{ now time.Time }

func (c fixedClock) Now() time.Time                       { return c.now }
func (c fixedClock) After(time.Duration) <-chan time.Time { return nil }

// woken reports whether a pass was asked for, and takes the request.
func (m *Maintainer) woken() bool {
	select {
	case <-m.wake:
		return true
	default:
		return false
	}
}

// Ingests wake a pass once the cache outgrows its limit; when a pass could
// not get under it, only after a tenth of the limit more has come, not
// after every download.
func TestIngestsWakeAPassOnlyWhenItCanHelp(t *testing.T) {
	t.Parallel()
	const limit = 1 << 30
	store := &fullCache{bytes: limit - 10<<20}
	m := New(Options{Store: store, Policy: cache.EvictionPolicy{MaxBytes: limit}, Clock: fixedClock{time.Unix(1e9, 0)},
		Metrics: NewMetrics(), Log: slog.New(slog.DiscardHandler)})
	m.Once(context.Background())
	if u := m.Usage(); u == nil || u.Bytes != store.bytes || !u.At.Equal(time.Unix(1e9, 0)) {
		t.Fatalf("usage after a pass: %+v", u)
	}

	m.Ingested(5 << 20)
	if m.woken() {
		t.Fatal("a pass was woken under the limit")
	}
	m.Ingested(6 << 20)
	if !m.woken() {
		t.Fatal("no pass was woken past the limit")
	}

	// The pass finds everything in use: the cache stays past its limit.
	store.bytes = limit + 1<<20
	m.Once(context.Background())
	for range 10 {
		m.Ingested(8 << 20) // 80 MiB in all: less than a tenth of the limit
		if m.woken() {
			t.Fatal("a pass was woken while nothing could go")
		}
	}
	m.Ingested(30 << 20)
	if !m.woken() {
		t.Fatal("no pass was woken a tenth of the limit later")
	}
	if store.passes != 2 {
		t.Errorf("%d eviction passes; want 2", store.passes)
	}
}

// TestPinnedBytesMetric: regnorm_cache_pinned_bytes is exported with both
// its states before any pass, and a pass sets them from the eviction's
// result.
func TestPinnedBytesMetric(t *testing.T) {
	t.Parallel()
	metrics := NewMetrics()
	pinned := func() map[string]float64 {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(metrics.Collectors()...)
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, f := range families {
			if f.GetName() != "regnorm_cache_pinned_bytes" {
				continue
			}
			for _, m := range f.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
		return got
	}
	if got := pinned(); len(got) != 2 || got["kept"] != 0 || got["over_limit"] != 0 {
		t.Fatalf("before a pass: %v, want kept and over_limit at 0", got)
	}
	store := &fullCache{bytes: 10 << 20, pinned: 3 << 20, pinnedOver: 1 << 20}
	m := New(Options{Store: store, Policy: cache.EvictionPolicy{MaxBytes: 1 << 30, MaxPinnedBytes: 3 << 20}, Clock: fixedClock{time.Unix(1e9, 0)},
		Metrics: metrics, Log: slog.New(slog.DiscardHandler)})
	m.Once(context.Background())
	if got := pinned(); got["kept"] != 3<<20 || got["over_limit"] != 1<<20 {
		t.Fatalf("after a pass: %v", got)
	}
}
