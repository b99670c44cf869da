package premade

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// fakeRepo records the variants asked of it.
type fakeRepo struct {
	forwards bool
	mu       sync.Mutex
	asked    []string // rule keys
}

func (r *fakeRepo) Identity() string { return "docker.io/library/app" }
func (r *fakeRepo) Forwards() bool   { return r.forwards }
func (r *fakeRepo) Variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error) {
	r.mu.Lock()
	r.asked = append(r.asked, normalize.Applicable(m, rules).Key())
	r.mu.Unlock()
	return normalize.Result{Manifest: m, Verdict: cache.Normalization{Original: m.Digest, Normalized: "sha256:made"}}, nil
}

// image is an image manifest with one gzip layer: the layer rules may
// change it.
func image(n int) cache.Manifest {
	content := []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","config":{"mediaType":"` + ocispec.MediaTypeImageConfig +
		`","digest":"sha256:` + digest.FromString("config").Encoded() + `","size":2},"layers":[{"mediaType":"` + ocispec.MediaTypeImageLayerGzip +
		`","digest":"sha256:` + digest.FromString(string(rune('a'+n))).Encoded() + `","size":3}]}`)
	return cache.Manifest{Digest: digest.FromBytes(content), MediaType: ocispec.MediaTypeImageManifest, Content: content}
}

// value is a counter's or a gauge's value, as a scrape reads it.
func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil || len(families) != 1 || len(families[0].GetMetric()) != 1 {
		t.Fatalf("gathering: %v, %d families", err, len(families))
	}
	d := families[0].GetMetric()[0]
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func version(s string) ruleset.Set {
	return ruleset.DefaultPolicy().ForVersion(containerdcfg.ParseVersion(s)).Rules
}

func newMaker(queue int, sets ...ruleset.Set) (*Maker, Metrics) {
	m := Metrics{Variants: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v"}, []string{"result"}), Queued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "q"})}
	mk, err := New(Options{
		RuleSets: func(context.Context) ([]ruleset.Set, error) { return sets, nil },
		Verdict: func(context.Context, cache.Manifest, ruleset.Set) (cache.Normalization, bool) {
			return cache.Normalization{}, false
		},
		Queue: queue, Budget: 10, Metrics: m, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	return mk, m
}

// TestOfferIsBounded: an image already queued is not queued again; one
// beyond the queue's capacity is dropped and counted; a repository read
// with forwarded credentials is never queued. Then the work makes each
// queued image's variant for the fleet's other version only: not the
// pulling client's own, and one for versions that share the rules.
func TestOfferIsBounded(t *testing.T) {
	t.Parallel()
	p, m := newMaker(2, version("1.6.8"), version("1.6.7"), version("2.3.4"))
	repo := &fakeRepo{}
	modern := version("2.3.4")
	p.Offer(repo, image(0), modern)
	p.Offer(repo, image(0), modern) // already queued
	p.Offer(&fakeRepo{forwards: true}, image(1), modern)
	p.Offer(repo, image(2), modern)
	p.Offer(repo, image(3), modern) // the queue is full
	if got := value(t, m.Queued); got != 2 {
		t.Fatalf("queued: %v, want 2", got)
	}
	if got := value(t, m.Variants.WithLabelValues(Dropped)); got != 1 {
		t.Fatalf("dropped: %v, want 1", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	deadline := time.Now().Add(time.Minute) // liveness only
	for value(t, m.Variants.WithLabelValues(Made)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("gave up waiting for the variants")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	repo.mu.Lock()
	defer repo.mu.Unlock()
	want := normalize.Applicable(image(0), version("1.6.8")).Key()
	if len(repo.asked) != 2 || repo.asked[0] != want || repo.asked[1] != want {
		t.Fatalf("variants asked: %q, want the 1.6.8 rules (%s) once an image", repo.asked, want)
	}
	if got := value(t, m.Queued); got != 0 {
		t.Fatalf("queued after the work: %v", got)
	}
}
