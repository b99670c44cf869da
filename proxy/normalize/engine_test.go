package normalize

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// The tests here drive the engine without HTTP: a source that serves
// generated images from memory through a real cache, counting what is read.

var (
	legacy     = regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}
	baseLayer  = []regtest.File{{Name: "bin/tool", Mode: 0o755, Content: []byte("#!/bin/sh\n")}}
	xattrLayer = []regtest.File{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/target", PAXRecords: map[string]string{"SCHILY.xattr.user.rpm": "x"}},
	}
)

// memSource serves blobs and manifests it holds as a verified download
// would: into the cache, then read back verified.
type memSource struct {
	store     *cache.Store
	blobs     map[digest.Digest][]byte
	manifests map[digest.Digest]cache.Manifest
	// short, when set, delivers only the first half of that blob, then a
	// clean end of stream (as a source that failed to verify would).
	short digest.Digest

	mu     sync.Mutex
	reads  []digest.Digest
	admits []digest.Digest
}

// errNotHeld is memSource's refusal of a blob it does not hold.
var errNotHeld = errors.New("the repository does not hold the blob")

func newSource(store *cache.Store, imgs ...regtest.Image) *memSource {
	s := &memSource{store: store, blobs: map[digest.Digest][]byte{}, manifests: map[digest.Digest]cache.Manifest{}}
	for _, img := range imgs {
		s.add(img)
	}
	return s
}

func (s *memSource) add(img regtest.Image) {
	s.blobs[digest.FromBytes(img.Config)] = img.Config
	for _, l := range img.Layers {
		s.blobs[digest.FromBytes(l)] = l
	}
	var m struct {
		MediaType string `json:"mediaType"`
	}
	json.Unmarshal(img.Manifest, &m)
	s.manifests[img.ManifestDigest] = cache.Manifest{MediaType: m.MediaType, Digest: img.ManifestDigest, Content: img.Manifest}
}

func (s *memSource) Upstream() string   { return "docker.io" }
func (s *memSource) Repository() string { return "library/app" }
func (s *memSource) Identity() string   { return "docker.io/library/app" }

func (s *memSource) Manifest(_ context.Context, dgst digest.Digest) (cache.Manifest, error) {
	m, ok := s.manifests[dgst]
	if !ok {
		return cache.Manifest{}, cache.ErrNotFound
	}
	return m, nil
}

func (s *memSource) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	s.read(dgst)
	if dgst == s.short {
		b := s.blobs[dgst]
		return io.NopCloser(bytes.NewReader(b[:len(b)/2])), nil
	}
	if err := s.ensure(ctx, dgst); err != nil {
		return nil, err
	}
	rc, _, err := s.store.OpenVerified(ctx, dgst)
	return rc, err
}

func (s *memSource) Ensure(ctx context.Context, dgst digest.Digest) error {
	s.read(dgst)
	return s.ensure(ctx, dgst)
}

func (s *memSource) read(dgst digest.Digest) {
	s.mu.Lock()
	s.reads = append(s.reads, dgst)
	s.mu.Unlock()
}

func (s *memSource) ensure(ctx context.Context, dgst digest.Digest) error {
	if _, err := s.store.StatBlob(ctx, dgst); err == nil {
		return nil
	}
	b, ok := s.blobs[dgst]
	if !ok {
		return cache.ErrNotFound
	}
	in, err := s.store.IngestBlob(ctx, dgst, int64(len(b)))
	if err != nil {
		return err
	}
	if _, err := in.Write(b); err != nil {
		return errors.Join(err, in.Cancel(ctx))
	}
	return in.Commit(ctx)
}

func (s *memSource) Learn(context.Context, digest.Digest, digest.Digest) {}

// Admit admits the blobs the source holds, as a repository does those it
// holds upstream.
func (s *memSource) Admit(_ context.Context, dgst digest.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.admits = append(s.admits, dgst)
	if _, ok := s.blobs[dgst]; !ok {
		return fmt.Errorf("%w: %s", errNotHeld, dgst)
	}
	return nil
}

func (s *memSource) blobReads() []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reads)
}

type reports struct {
	mu      sync.Mutex
	entries []cache.ReportEntry
}

func (r *reports) Add(e cache.ReportEntry) {
	r.mu.Lock()
	r.entries = append(r.entries, e)
	r.mu.Unlock()
}

func newEngine(store *cache.Store) *Engine {
	counter := func() prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}) }
	gauge := func() prometheus.Gauge { return prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}) }
	vec := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v"}, []string{"l"})
	}
	return New(Options{
		Store:   store,
		Reports: &reports{},
		Metrics: Metrics{Rewrites: vec(), RewriteErrors: vec(), Normalizations: vec(), LayersSkipped: vec(),
			NormalizeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h"}),
			LayersScanned:     counter(), LayersRepackaged: counter(), BytesScanned: counter(), BytesRepackaged: counter(), Rebuilds: counter(),
			LayerWorkInflight: gauge(), LayerWorkQueued: gauge(), LayerWorkRejected: counter()},
		Log:       slog.New(slog.DiscardHandler),
		Now:       func() time.Time { return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) },
		Timeout:   time.Minute,
		Platforms: DefaultPlatforms(),
	})
}

func build(t *testing.T, opts regtest.ImageOptions, layers ...[]regtest.File) regtest.Image {
	t.Helper()
	img, err := regtest.BuildImage(opts, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// manifestOf is img's manifest as the cache holds it, of the type its
// content says (Docker's or OCI's, as its layer type made it).
func manifestOf(img regtest.Image) cache.Manifest {
	mt, err := mediatype.Of(img.Manifest)
	if err != nil {
		panic(err)
	}
	return cache.Manifest{MediaType: mt, Digest: img.ManifestDigest, Content: img.Manifest}
}

var (
	configOnly = ruleset.Set{ConfigMediaType: true}
	both       = ruleset.Set{ConfigMediaType: true, SymlinkXattrs: true}
)

// TestNoLayerReadForClientsThatNeedNone: a client without the layer rule
// (containerd 1.6.9+) gets an image whose only defect is an xattr on a
// symlink as it is, and nothing of it is read; the octet-stream fix reads
// the config and nothing else.
func TestNoLayerReadForClientsThatNeedNone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	xattr := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer)
	old := build(t, legacy, baseLayer)
	src := newSource(store, xattr, old)
	e := newEngine(store)

	res, err := e.Normalize(ctx, src, manifestOf(xattr), configOnly)
	if err != nil || res.Changed() || res.Manifest.Digest != xattr.ManifestDigest {
		t.Fatalf("xattr image for config-only rules: %+v, %v", res.Verdict, err)
	}
	if got := src.blobReads(); len(got) != 0 {
		t.Fatalf("read %v for a client that needs no layer rule", got)
	}
	if res, err := e.Normalize(ctx, src, manifestOf(xattr), ruleset.Set{}); err != nil || res.Changed() || len(src.blobReads()) != 0 {
		t.Fatalf("no rules: %+v, %v, reads %v", res.Verdict, err, src.blobReads())
	}

	res, err = e.Normalize(ctx, src, manifestOf(old), configOnly)
	if err != nil || !res.Changed() {
		t.Fatalf("octet-stream image for config-only rules: %+v, %v", res.Verdict, err)
	}
	if got, want := src.blobReads(), []digest.Digest{digest.FromBytes(old.Config)}; !slices.Equal(got, want) {
		t.Fatalf("the config fix read %v, want only the config %v", got, want)
	}
}

// TestVariantsPerRuleSet: verdicts are kept per (original, rule set); an
// image with both defects has one variant per set, and a second engine on
// another cache (another replica) computes the same bytes for each.
func TestVariantsPerRuleSet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	img := build(t, legacy, baseLayer, xattrLayer)
	variants := func() map[string]digest.Digest {
		store := cache.New(inmemory.New())
		e := newEngine(store)
		src := newSource(store, img)
		out := map[string]digest.Digest{}
		for _, rules := range []ruleset.Set{configOnly, both, {SymlinkXattrs: true}} {
			res, err := e.Normalize(ctx, src, manifestOf(img), rules)
			if err != nil || !res.Changed() {
				t.Fatalf("%s: %+v, %v", rules.Key(), res.Verdict, err)
			}
			n, err := store.GetNormalization(ctx, img.ManifestDigest, rules.Key())
			if err != nil || n.Normalized != res.Manifest.Digest || n.Rules != rules.Key() {
				t.Fatalf("%s: recorded %+v, %v", rules.Key(), n, err)
			}
			out[rules.Key()] = res.Manifest.Digest
		}
		return out
	}
	first, second := variants(), variants()

	// Rules that cannot touch the image share the variant of those that
	// can: All (with the zstd rule) is both's variant here, under both's
	// rules, the diff IDs rule (which applies to every image, and finds
	// its diff IDs right) and the sparse rule (which applies to every image
	// with layers, and finds no sparse entry).
	store := cache.New(inmemory.New())
	res, err := newEngine(store).Normalize(ctx, newSource(store, img), manifestOf(img), ruleset.All())
	withDiffIDs := both
	withDiffIDs.DiffIDs, withDiffIDs.GNUSparse = true, true
	if err != nil || res.Manifest.Digest != first[both.Key()] || res.Verdict.Rules != withDiffIDs.Key() {
		t.Fatalf("every rule: %+v, %v; want the variant of %s", res.Verdict, err, both.Key())
	}

	if len(first) != 3 || first[configOnly.Key()] == first[both.Key()] || first[both.Key()] == first[ruleset.SymlinkXattrs] {
		t.Fatalf("variants: %v; want three different digests", first)
	}
	for key, d := range first {
		if second[key] != d {
			t.Errorf("%s: %s on one replica, %s on another", key, d, second[key])
		}
	}
}

// TestVerdictsAreReused: a second engine on the same cache (a restart, a
// replica) answers from the verdicts, reading nothing.
func TestVerdictsAreReused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	img := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer)
	first, err := newEngine(store).Normalize(ctx, newSource(store, img), manifestOf(img), both)
	if err != nil || !first.Changed() {
		t.Fatalf("%+v, %v", first.Verdict, err)
	}
	src := newSource(store, img)
	again, err := newEngine(store).Normalize(ctx, src, manifestOf(img), both)
	if err != nil || again.Manifest.Digest != first.Manifest.Digest || !bytes.Equal(again.Manifest.Content, first.Manifest.Content) {
		t.Fatalf("again: %+v, %v", again.Verdict, err)
	}
	if got := src.blobReads(); len(got) != 0 {
		t.Fatalf("a known verdict read %v", got)
	}
}

// TestShortBlobIsNoVerdict: a blob that arrives short through the source,
// even with a clean end of stream, is an error: the engine verifies what
// it reads itself, and no normalization is recorded.
func TestShortBlobIsNoVerdict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	img := build(t, legacy, baseLayer)
	src := newSource(store, img)
	src.short = digest.FromBytes(img.Config)
	if res, err := newEngine(store).Normalize(ctx, src, manifestOf(img), both); err == nil {
		t.Fatalf("normalized from a short config: %+v", res.Verdict)
	}
	if n, err := store.GetNormalization(ctx, img.ManifestDigest, both.Key()); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("normalization from a short read: %+v, %v", n, err)
	}
}

// TestDamagedLayerIsFetchedAgain: a layer is read from the cache once
// fetched, verified as it is read. A cached copy whose bytes went bad is
// no verdict: it is removed and fetched again, once, and the verdict is
// made from the good copy.
func TestDamagedLayerIsFetchedAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	driver := inmemory.New()
	store := cache.New(driver)
	img := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer)
	src := newSource(store, img)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	layer := m.Layers[1].Digest
	if err := src.ensure(ctx, layer); err != nil {
		t.Fatal(err)
	}
	good := src.blobs[layer]
	bad := append([]byte{good[0] ^ 0xff}, good[1:]...)
	if err := driver.PutContent(ctx, "/blobs/sha256/"+layer.Encoded()[:2]+"/"+layer.Encoded()+"/data", bad); err != nil {
		t.Fatal(err)
	}
	res, err := newEngine(store).Normalize(ctx, src, manifestOf(img), both)
	if err != nil || !res.Changed() {
		t.Fatalf("normalized from a damaged cached layer: %+v, %v", res.Verdict, err)
	}
	if v, err := store.GetLayerVerdict(ctx, layer); err != nil || v.Repacked == "" {
		t.Fatalf("layer verdict: %+v, %v; want it repackaged", v, err)
	}
	if n := slices.Index(src.blobReads(), layer); n < 0 || slices.Index(src.blobReads()[n+1:], layer) < 0 {
		t.Fatalf("reads %v: want the layer fetched twice", src.blobReads())
	}
}

// TestIndexVerdictsPerPlatforms: an index's variant depends on the children
// read, so replicas or restarts with other normalize.platforms on one cache
// keep their own verdicts instead of serving each other's.
func TestIndexVerdictsPerPlatforms(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	amd64, arm := build(t, legacy, baseLayer), build(t, legacy, xattrLayer)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd64.ManifestDigest, Size: int64(len(amd64.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: arm.ManifestDigest, Size: int64(len(arm.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	m := cache.Manifest{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(raw), Content: raw}

	fixed := func(e *Engine) []bool {
		res, err := e.Normalize(ctx, newSource(store, amd64, arm), m, configOnly)
		if err != nil {
			t.Fatal(err)
		}
		var out ocispec.Index
		json.Unmarshal(res.Manifest.Content, &out)
		return []bool{out.Manifests[0].Digest != amd64.ManifestDigest, out.Manifests[1].Digest != arm.ManifestDigest}
	}
	all, _ := ParsePlatforms([]string{"all"})
	defaults, everything := newEngine(store), newEngine(store)
	everything.opts.Platforms = all
	if got := fixed(defaults); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("default platforms fixed %v, want only linux/amd64", got)
	}
	if got := fixed(everything); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("all platforms, after the default's verdict: fixed %v, want both", got)
	}
	if got := fixed(defaults); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("default platforms again: fixed %v", got)
	}
}
