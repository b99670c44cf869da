package mirror_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"testing"
	"testing/synctest"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// changingEngine makes a variant of every manifest at once: m with its
// config declared as Docker's config type.
type changingEngine struct{}

func (changingEngine) Normalize(_ context.Context, _ normalize.Source, m cache.Manifest, rules ruleset.Set) (normalize.Result, error) {
	var om ocispec.Manifest
	if err := json.Unmarshal(m.Content, &om); err != nil {
		return normalize.Result{}, err
	}
	om.Config.MediaType = "application/vnd.docker.container.image.v1+json"
	b, err := json.Marshal(om)
	if err != nil {
		return normalize.Result{}, err
	}
	v := cache.Manifest{MediaType: m.MediaType, Digest: digest.FromBytes(b), Content: b}
	return normalize.Result{Manifest: v, Verdict: cache.Normalization{Original: m.Digest, Normalized: v.Digest, MediaType: v.MediaType,
		Rules: rules.Key(), Changes: []cache.Change{{Kind: "config-media-type", Path: "config.mediaType", Old: "application/octet-stream", New: om.Config.MediaType}}}}, nil
}

func (changingEngine) RebuildLayer(context.Context, normalize.Source, cache.Derived) error {
	return errors.New("nothing to rebuild")
}

func (changingEngine) Verdict(context.Context, cache.Manifest, ruleset.Set) (cache.Normalization, bool) {
	return cache.Normalization{}, false
}

// stuckMade is cache storage that does not answer the attestation's
// writes: each waits for its context.
type stuckMade struct{ *cache.Store }

func (stuckMade) Retain(ctx context.Context, _ digest.Digest) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestAttestingRespectsTheClientsTime: a variant answered in time is not
// held back past the client's wait, nor past its deadline, by an
// attestation whose storage does not answer: the attestation is not the
// answer (a failure is logged, "never fails the pull"), so it must not
// make the pull fail either, by time (containerd 1.7.0 – 1.7.9 give up
// after 50 s; normalize.deadline is 25 s, and 25 + 30 > 50).
func TestAttestingRespectsTheClientsTime(t *testing.T) {
	t.Parallel()
	img, err := regtest.BuildImage(regtest.ImageOptions{ConfigMediaType: "application/octet-stream"},
		[]regtest.File{{Name: "hello.txt", Content: []byte("hello\n")}})
	if err != nil {
		t.Fatal(err)
	}
	orig := cache.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: img.ManifestDigest, Content: img.Manifest}
	rules := ruleset.Set{ConfigMediaType: true}
	for _, tc := range []struct {
		name     string
		wait     time.Duration // Variant's
		deadline time.Duration // the client's context's
	}{{"wait", 5 * time.Second, 0}, {"deadline", 0, 5 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := slog.New(slog.DiscardHandler)
				u, _ := url.Parse("http://127.0.0.1:9") // never asked: the engine reads nothing
				up := upstream.New(upstream.Config{Name: "docker.io", URL: u}, upstream.Options{
					Retry: upstream.RetryPolicy{Attempts: 1}, Stall: 10 * time.Second, Metrics: upstream.NewMetrics(), Log: log})
				store := cache.New(inmemory.New())
				svc := mirror.New(mirror.Options{Store: store, Engine: changingEngine{}, Clock: clock{}, Log: log,
					Metrics: mirror.Metrics{
						CacheRequests:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cache_requests"}, []string{"kind", "result"}),
						StaleServes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stale_serves"}, []string{"upstream"}),
						DeadlineExceeded: prometheus.NewCounter(prometheus.CounterOpts{Name: "deadline_exceeded"}),
					},
					Attest: &attest.Maker{Version: "v0.test"}, Made: stuckMade{store}})
				app := svc.Repository(up.Repository("library/app"))
				ctx := context.Background()
				limit := tc.wait
				if tc.deadline > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.deadline)
					defer cancel()
					limit = tc.deadline
				}
				start := time.Now()
				n, err := app.Variant(ctx, orig, rules, tc.wait)
				took := time.Since(start)
				if err != nil || !n.Changed() {
					t.Fatalf("the variant: %v (changed %v)", err, n.Changed())
				}
				if took > limit {
					t.Errorf("the variant was made at once, and answered after %s: past the client's %s (%s), waiting for its attestation", took, tc.name, limit)
				}
				// The attestation goes on in the background until its own
				// bound; the bubble ends when it has.
				time.Sleep(time.Minute)
			})
		})
	}
}
