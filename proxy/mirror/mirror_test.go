package mirror_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

type clock struct{}

func (clock) Now() time.Time                                  { return time.Now() }
func (clock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// engine is a rule engine that makes nothing: Normalize waits for release
// (when set) and answers the original.
type engine struct {
	release chan struct{}
	sources chan normalize.Source // what Normalize was handed
}

func (e *engine) Normalize(ctx context.Context, src normalize.Source, m cache.Manifest, _ ruleset.Set) (normalize.Result, error) {
	if e.sources != nil {
		e.sources <- src
	}
	if e.release != nil {
		select {
		case <-e.release:
		case <-ctx.Done():
			return normalize.Result{}, ctx.Err()
		}
	}
	return normalize.Result{Manifest: m, Verdict: cache.Normalization{Original: m.Digest, MediaType: m.MediaType}}, nil
}

func (e *engine) RebuildLayer(context.Context, normalize.Source, cache.Derived) error {
	return errors.New("nothing to rebuild")
}

func (e *engine) Verdict(context.Context, cache.Manifest, ruleset.Set) (cache.Normalization, bool) {
	return cache.Normalization{}, false
}

// countingStore is the cache, counting the blobs opened. The next
// failOpens opens of a blob fail, as a storage's read may; the next
// missLinks and missBlobs looks for a link or a blob find none, as a
// replica does that looks while another's download of the blob is ending.
type countingStore struct {
	*cache.Store
	opens                           atomic.Int64
	failOpens, missLinks, missBlobs atomic.Int64
}

// next takes one of n's turns, if any is left.
func next(n *atomic.Int64) bool {
	if n.Add(-1) >= 0 {
		return true
	}
	n.Store(0)
	return false
}

func (s *countingStore) OpenBlob(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadSeekCloser, cache.BlobInfo, error) {
	s.opens.Add(1)
	if next(&s.failOpens) {
		return nil, cache.BlobInfo{}, errors.New("storage read failed")
	}
	return s.Store.OpenBlob(ctx, dgst, offset)
}

func (s *countingStore) HasLink(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
	if next(&s.missLinks) {
		return false, nil
	}
	return s.Store.HasLink(ctx, upstream, repo, dgst)
}

func (s *countingStore) StatBlob(ctx context.Context, dgst digest.Digest) (cache.BlobInfo, error) {
	if next(&s.missBlobs) {
		return cache.BlobInfo{}, cache.ErrNotFound
	}
	return s.Store.StatBlob(ctx, dgst)
}

func (s *countingStore) OpenVerified(ctx context.Context, dgst digest.Digest) (io.ReadCloser, cache.BlobInfo, error) {
	s.opens.Add(1)
	return s.Store.OpenVerified(ctx, dgst)
}

// fixture is a service over an in-memory cache, in front of a registry
// holding library/app:v1.
type fixture struct {
	store *countingStore
	svc   *mirror.Service
	up    *upstream.Registry
	// upMetrics count the requests sent upstream (upstreamRequests).
	upMetrics *upstream.Metrics
	img       regtest.Image
	layer     digest.Digest
	metrics   mirror.Metrics
}

func newFixture(t *testing.T, e mirror.Engine) *fixture {
	t.Helper()
	reg := regtest.Start(t, regtest.Options{})
	img, layer := pushApp(t, reg, "hello\n")
	u, _ := url.Parse(reg.URL)
	log := slog.New(slog.DiscardHandler)
	upMetrics := upstream.NewMetrics()
	up := upstream.New(upstream.Config{Name: "docker.io", URL: u}, upstream.Options{
		Retry: upstream.RetryPolicy{Attempts: 1}, Stall: 10 * time.Second, Metrics: upMetrics, Log: log})
	store := &countingStore{Store: cache.New(inmemory.New())}
	svc, metrics := newService(t, store, e)
	return &fixture{store: store, svc: svc, up: up, upMetrics: upMetrics, img: img, layer: layer, metrics: metrics}
}

// pushApp pushes library/app:v1 to reg, an image of one layer holding
// content, with the config type old Docker images have.
func pushApp(t *testing.T, reg *regtest.Registry, content string) (regtest.Image, digest.Digest) {
	t.Helper()
	img, err := regtest.BuildImage(regtest.ImageOptions{ConfigMediaType: "application/octet-stream"},
		[]regtest.File{{Name: "hello.txt", Content: []byte(content)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Client().PushImage(context.Background(), "library/app", "v1", img); err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(img.Manifest, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("the image's manifest: %v", err)
	}
	return img, m.Layers[0].Digest
}

// newService is a service over store, as one replica of several sharing
// it would be.
func newService(t *testing.T, store *countingStore, e mirror.Engine) (*mirror.Service, mirror.Metrics) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	var svc *mirror.Service
	fetches := blobfetch.New(blobfetch.Options{
		Store: store, SpoolDir: t.TempDir(), Timeout: time.Minute, Clock: clock{},
		Metrics: blobfetch.NewMetrics(), Log: log, OnCommit: func(int64) {},
		Sent: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) bool {
			return svc.SentBy(ctx, r, dgst)
		},
		OnAnswered: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { svc.Answered(ctx, r, dgst) },
		OnSent:     func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { svc.Sent(ctx, r, dgst) },
	})
	metrics := mirror.Metrics{
		CacheRequests:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cache_requests"}, []string{"kind", "result"}),
		StaleServes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stale_serves"}, []string{"upstream"}),
		DeadlineExceeded: prometheus.NewCounter(prometheus.CounterOpts{Name: "deadline_exceeded"}),
	}
	svc = mirror.New(mirror.Options{Store: store, Fetches: fetches, Engine: e, Clock: clock{}, Metrics: metrics, Log: log})
	return svc, metrics
}

func wantRefused(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var e *errcode.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code {
		t.Errorf("%s: %v, want %d %s", what, err, status, code)
	}
}

// TestReadsAreHeldByTheirRepository: what one repository read, through the
// service alone, is cached for all, and another repository that does not
// hold it upstream is refused it as the upstream would refuse it, however
// it is asked: by a client or by the engine's Source.
func TestReadsAreHeldByTheirRepository(t *testing.T) {
	t.Parallel()
	f := newFixture(t, &engine{})
	ctx := context.Background()
	app := f.svc.Repository(f.up.Repository("library/app"))
	m, err := app.Manifest(ctx, "v1", nil)
	if err != nil || m.Digest != f.img.ManifestDigest || m.Source != "upstream" {
		t.Fatalf("library/app:v1: %v %s from %q", err, m.Digest, m.Source)
	}
	b, err := app.OpenBlob(ctx, f.layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	b.Close()
	if err != nil || digest.FromBytes(got) != f.layer || !b.Fetched {
		t.Fatalf("the layer: %v, fetched %v", err, b.Fetched)
	}
	if m, err := app.Manifest(ctx, f.img.ManifestDigest.String(), nil); err != nil || m.Source != "cache" {
		t.Fatalf("library/app by digest: %v from %q", err, m.Source)
	}

	other := f.svc.Repository(f.up.Repository("library/other"))
	_, err = other.Manifest(ctx, f.img.ManifestDigest.String(), nil)
	wantRefused(t, "manifest", err, http.StatusNotFound, errcode.ManifestUnknown)
	_, err = other.OpenBlob(ctx, f.layer, 0)
	wantRefused(t, "blob", err, http.StatusNotFound, errcode.BlobUnknown)
	_, err = other.StatBlob(ctx, f.layer)
	wantRefused(t, "blob's stat", err, http.StatusNotFound, errcode.BlobUnknown)
	_, err = other.Source().Manifest(ctx, f.img.ManifestDigest)
	wantRefused(t, "engine's manifest", err, http.StatusNotFound, errcode.ManifestUnknown)
	_, err = other.Source().OpenBlob(ctx, f.layer)
	wantRefused(t, "engine's blob", err, http.StatusNotFound, errcode.BlobUnknown)
}

// TestRelayOfABlobFoundCachedIsServed: another replica asks this one for a
// blob the repository holds; the cache read fails once, so the blob goes
// the download's way, and that download finds it in the cache, sent by
// this upstream before, and asks nobody. The asking replica gets the blob
// from the cache, not a 503 telling it to download the blob itself (one
// more upstream download).
func TestRelayOfABlobFoundCachedIsServed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, &engine{})
	ctx := context.Background()
	app := f.svc.Repository(f.up.Repository("library/app"))
	if err := app.Source().Ensure(ctx, f.layer); err != nil { // downloads it
		t.Fatal(err)
	}
	f.store.failOpens.Store(1)
	b, err := app.ForReplica(replicas.KindBlob).OpenBlob(ctx, f.layer, 0)
	if err != nil {
		t.Fatalf("the relay of a blob the download found cached: %v", err)
	}
	got, err := io.ReadAll(b)
	b.Close()
	if err != nil || digest.FromBytes(got) != f.layer {
		t.Fatalf("the relayed layer: %v, %d bytes that are not it", err, len(got))
	}
}

// TestRelayAfterTheDownloadEndedAsksNobody: another replica asks this one
// for a blob while this replica's download of it ends: the relay finds
// neither the repository's link nor the blob, joins a download that finds
// them both, and is served from the cache without a question to the
// upstream (a HEAD) that the link it now finds answers.
func TestRelayAfterTheDownloadEndedAsksNobody(t *testing.T) {
	t.Parallel()
	f := newFixture(t, &engine{})
	ctx := context.Background()
	if err := f.svc.Repository(f.up.Repository("library/app")).Source().Ensure(ctx, f.layer); err != nil { // downloads it
		t.Fatal(err)
	}
	replica, _ := newService(t, f.store, &engine{}) // remembers no link
	before := upstreamRequests(t, f.upMetrics)
	f.store.missLinks.Store(1)
	f.store.missBlobs.Store(1)
	b, err := replica.Repository(f.up.Repository("library/app")).ForReplica(replicas.KindBlob).OpenBlob(ctx, f.layer, 0)
	if err != nil {
		t.Fatalf("the relay: %v", err)
	}
	got, err := io.ReadAll(b)
	b.Close()
	if err != nil || digest.FromBytes(got) != f.layer {
		t.Fatalf("the relayed layer: %v, %d bytes that are not it", err, len(got))
	}
	if n := upstreamRequests(t, f.upMetrics) - before; n != 0 {
		t.Errorf("the relay sent %v requests upstream, want 0", n)
	}
}

// upstreamRequests is how many requests were sent upstream.
func upstreamRequests(t *testing.T, m *upstream.Metrics) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() == "regnorm_upstream_requests_total" {
			for _, s := range f.GetMetric() {
				total += s.GetCounter().GetValue()
			}
		}
	}
	return total
}

// TestEnsureOpensNothingCached: the engine's Ensure of a blob the
// repository holds in the cache is admitted and opens nothing (on S3, an
// open is a billed request); one the repository does not hold is refused.
func TestEnsureOpensNothingCached(t *testing.T) {
	t.Parallel()
	f := newFixture(t, &engine{})
	ctx := context.Background()
	app := f.svc.Repository(f.up.Repository("library/app"))
	if err := app.Source().Ensure(ctx, f.layer); err != nil { // downloads it
		t.Fatal(err)
	}
	before := f.store.opens.Load()
	if err := app.Source().Ensure(ctx, f.layer); err != nil {
		t.Fatal(err)
	}
	if n := f.store.opens.Load() - before; n != 0 {
		t.Errorf("Ensure of a cached blob opened it %d times, want 0", n)
	}
	other := f.svc.Repository(f.up.Repository("library/other"))
	wantRefused(t, "another repository's Ensure", other.Source().Ensure(ctx, f.layer), http.StatusNotFound, errcode.BlobUnknown)
}

// TestVariantWaitsAtMostItsWait: a client waits for its variant no longer
// than its wait, and is told to come back; the engine reads through the
// repository's own Source. Without a wait (warm), the caller waits for the
// engine's answer.
func TestVariantWaitsAtMostItsWait(t *testing.T) {
	t.Parallel()
	e := &engine{release: make(chan struct{}), sources: make(chan normalize.Source, 2)}
	f := newFixture(t, e)
	ctx := context.Background()
	app := f.svc.Repository(f.up.Repository("library/app"))
	m, err := app.Manifest(ctx, "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	rules := ruleset.Set{ConfigMediaType: true}
	_, err = app.Variant(ctx, m.Manifest, rules, time.Millisecond)
	wantRefused(t, "past the wait", err, http.StatusServiceUnavailable, errcode.Unavailable)
	var e503 *errcode.Error
	if errors.As(err, &e503) && e503.RetryAfter <= 0 {
		t.Error("no Retry-After past the wait")
	}
	if n := counted(t, f.metrics.DeadlineExceeded); n != 1 {
		t.Errorf("deadline exceeded = %v, want 1", n)
	}
	if src := <-e.sources; src.Repository() != "library/app" || src.Upstream() != "docker.io" {
		t.Errorf("the engine read %s/%s", src.Upstream(), src.Repository())
	}
	close(e.release)
	n, err := app.Variant(ctx, m.Manifest, rules, 0)
	if err != nil || !bytes.Equal(n.Manifest.Content, m.Content) {
		t.Fatalf("without a wait: %v", err)
	}
}

// counted is c's value.
func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil || len(families) != 1 {
		t.Fatalf("gather: %v", err)
	}
	return families[0].GetMetric()[0].GetCounter().GetValue()
}
