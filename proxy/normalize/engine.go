// Package normalize is the rule engine: for an original manifest or index
// and a client's rule set, it decides the variant to serve and makes it,
// reading the config and layers through a Source (which admits the client
// and verifies every byte) and publishing what it derives to the cache. It
// records verdicts per (original, rule set), so a restart or another
// replica answers the same without recomputing.
//
// It knows the cache and the pure rewrites; it does not know HTTP, clients'
// credentials or the download fan-out: those are behind Source.
package normalize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// MaxIndexDepth is how deep in indexes of indexes the engine makes
// variants: the top index is at depth 0, and an index at this depth or
// deeper is served as it is (its children are the upstream's own).
const MaxIndexDepth = 2

const (
	// maxConfigSize caps a config blob read into memory for normalization.
	maxConfigSize = 8 << 20
	// childFetches is how many children of an index are fetched at once.
	childFetches = 4
	// layerFetches is how many layers of one image are fetched and scanned at once.
	layerFetches = 3
)

// errInvalidContent marks content the rules refuse (invalid, ambiguous,
// oversized): such a document is served untouched. Every other error (an
// upstream that cannot deliver a config, say) fails the request instead.
var errInvalidContent = errors.New("content not normalizable")

// Source is where the engine reads an image from, as the client that asked
// for it: the implementation admits the client for every object and
// verifies every byte against its digest as it is read.
type Source interface {
	// Upstream and Repository name where the image is, for the report and
	// the logs.
	Upstream() string
	Repository() string
	// Identity names who the reads ask upstream as (the upstream, the
	// repository and, with forwarded credentials, the client's): work is
	// shared only between callers of one identity, whose refusal must not
	// become another client's answer.
	Identity() string
	// Manifest returns a child manifest of an index.
	Manifest(ctx context.Context, dgst digest.Digest) (cache.Manifest, error)
	// OpenBlob opens a blob, verified as it is read: from the download's
	// spool while it downloads, or from the cache. A short or wrong blob
	// is an error at the end of the read.
	OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error)
	// Ensure makes sure the cache holds dgst: it downloads it (or joins
	// the download under way), or rebuilds it when it is a repackaged
	// layer that was evicted. Layer work calls it before it takes its
	// turn, never under one.
	Ensure(ctx context.Context, dgst digest.Digest) error
	// Learn records that the repository holds derived, made from source
	// (which it holds upstream).
	Learn(ctx context.Context, derived, source digest.Digest)
	// Admit lets the client read blob dgst here, as a read of it would.
	// What regnorm recorded of a layer is kept by digest, and an image of
	// any repository or upstream can name that digest: the engine asks
	// before it builds on a record (layerRecord).
	Admit(ctx context.Context, dgst digest.Digest) error
}

// Store is the part of the cache the engine uses.
type Store interface {
	cache.NormalizationStore
	cache.LayerVerdictStore
	cache.DerivedStore
	cache.ManifestStore
	OpenVerified(ctx context.Context, dgst digest.Digest) (io.ReadCloser, cache.BlobInfo, error)
	NewBlob(ctx context.Context) (*cache.Ingest, error)
	IngestBlob(ctx context.Context, want digest.Digest, size int64) (*cache.Ingest, error)
	StatBlob(ctx context.Context, dgst digest.Digest) (cache.BlobInfo, error)
	Retain(ctx context.Context, dgst digest.Digest) error
}

// Reporter takes what the rewrite report shows.
type Reporter interface {
	Add(e cache.ReportEntry)
}

// Metrics are the engine's Prometheus metrics; the caller registers them.
type Metrics struct {
	Rewrites          *prometheus.CounterVec // by kind
	RewriteErrors     *prometheus.CounterVec // by reason: invalid, fetch
	Normalizations    *prometheus.CounterVec // by result
	NormalizeDuration prometheus.Histogram
	LayersScanned     prometheus.Counter
	LayersRepackaged  prometheus.Counter
	LayersSkipped     *prometheus.CounterVec // by reason
	BytesScanned      prometheus.Counter
	BytesRepackaged   prometheus.Counter
	Rebuilds          prometheus.Counter
	LayerWorkInflight prometheus.Gauge
	LayerWorkQueued   prometheus.Gauge
	LayerWorkRejected prometheus.Counter
}

// Options configure an Engine.
type Options struct {
	Store   Store
	Reports Reporter
	Metrics Metrics
	Log     *slog.Logger
	// Now is the clock verdicts are dated by.
	Now func() time.Time
	// Timeout bounds one piece of shared work, like the downloads it waits
	// for: clients are answered by their own deadline, not by this one.
	// Default DefaultTimeout.
	Timeout time.Duration
	// MaxLayerSize bounds how far a layer is decompressed to scan it: one
	// that expands further (a decompression bomb) is served untouched.
	// Default DefaultMaxLayerSize.
	MaxLayerSize int64
	// MaxMadeSize bounds a layer the engine makes (0: none), beside
	// madeRatio times its source: the largest blob an upstream may send.
	// It is the same for every upstream, since what the engine concludes
	// of a layer or an image (left untouched, or not) is shared by digest.
	MaxMadeSize int64
	// MaxZstdWindow bounds the window of a zstd layer's frames, and so the
	// memory its decoder holds (0: rewrite.DefaultZstdWindow); a layer
	// that declares more is left untouched.
	MaxZstdWindow int64
	// Work bounds the scans, repackagings and recompressions that run and
	// wait at once.
	Work WorkLimits
	// Platforms are the children of an index that are read.
	Platforms Platforms
	// Ingested is told the size of every blob the engine writes.
	Ingested func(size int64)
}

// Engine normalizes manifests and indexes.
type Engine struct {
	opts Options
	m    Metrics
	log  *slog.Logger

	normalizations singleflight.Group // by original, rule set and identity
	layers         singleflight.Group // scans and rebuilds, by layer and identity
	work           *workQueue         // turns to read and write layers
}

// Defaults of Options' zero fields.
const (
	// DefaultTimeout bounds one piece of shared work.
	DefaultTimeout = time.Hour
	// DefaultMaxLayerSize bounds how far a layer is decompressed to scan it.
	DefaultMaxLayerSize = 16 << 30
)

// New returns an engine; zero fields of opts take their defaults.
func New(opts Options) *Engine {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxLayerSize <= 0 {
		opts.MaxLayerSize = DefaultMaxLayerSize
	}
	if opts.MaxZstdWindow <= 0 {
		opts.MaxZstdWindow = rewrite.DefaultZstdWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Ingested == nil {
		opts.Ingested = func(int64) {}
	}
	return &Engine{opts: opts, m: opts.Metrics, log: opts.Log, work: newWorkQueue(opts.Work, opts.Metrics)}
}

// Result is what to serve for one original manifest under one rule set,
// and why.
type Result struct {
	Manifest cache.Manifest
	// Verdict's Normalized is empty when the original is served.
	Verdict cache.Normalization
}

// Changed reports whether the variant differs from the original.
func (r Result) Changed() bool { return r.Verdict.Normalized != "" }

// Normalize returns the variant of m for rules: its normalized form, or m
// itself. Verdicts are read from the cache first.
func (e *Engine) Normalize(ctx context.Context, src Source, m cache.Manifest, rules ruleset.Set) (Result, error) {
	return e.normalize(ctx, src, m, rules, 0)
}

// Verdict returns the recorded verdict for m under rules, if any; it never
// computes one.
func (e *Engine) Verdict(ctx context.Context, m cache.Manifest, rules ruleset.Set) (cache.Normalization, bool) {
	rules = Applicable(m, rules)
	if !MayNeed(m, rules) {
		return cache.Normalization{}, false
	}
	n, err := e.opts.Store.GetNormalization(ctx, m.Digest, e.verdictKey(m, rules))
	return n, err == nil && !n.Limited.RaisedBy(e.current())
}

// verdictKey is what m's verdict under rules is kept under: the rule set
// and, for an index, the platforms whose children it reads (replicas or
// restarts with other platforms make another variant, not the same one).
func (e *Engine) verdictKey(m cache.Manifest, rules ruleset.Set) string {
	if rewrite.IsIndex(m.MediaType) && !rules.Empty() {
		return rules.Key() + "," + e.opts.Platforms.key()
	}
	return rules.Key()
}

func (e *Engine) normalize(ctx context.Context, src Source, m cache.Manifest, rules ruleset.Set, depth int) (Result, error) {
	rules = Applicable(m, rules)
	key := e.verdictKey(m, rules)
	clean := Result{Manifest: m, Verdict: cache.Normalization{Original: m.Digest, MediaType: m.MediaType, Rules: key}}
	if !mayNeed(m, rules, depth) {
		return clean, nil
	}
	// A verdict that left a layer untouched for a limit raised since is
	// made again: the layer may be read now.
	if n, err := e.opts.Store.GetNormalization(ctx, m.Digest, key); err == nil && !n.Limited.RaisedBy(e.current()) {
		if n.Normalized == "" {
			return Result{Manifest: m, Verdict: n}, nil
		}
		if nm, err := e.opts.Store.GetManifest(ctx, src.Upstream(), src.Repository(), n.Normalized); err == nil {
			return Result{Manifest: nm, Verdict: n}, nil
		}
		// The verdict outlived its manifest: compute both again.
	}
	// The work is shared, and goes on when one caller stops waiting for it
	// (within the engine's timeout): the caller does not wait past ctx.
	ch := e.normalizations.DoChan(m.Digest.String()+" "+key+" "+src.Identity(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.Timeout)
		defer cancel()
		return e.compute(ctx, src, m, rules, depth)
	})
	var v any
	var err error
	select {
	case r := <-ch:
		v, err = r.Val, r.Err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	if err != nil {
		e.m.RewriteErrors.WithLabelValues("fetch").Inc()
		e.m.Normalizations.WithLabelValues("error").Inc()
		return Result{}, err
	}
	return v.(Result), nil
}

// applicableToIndex is every rule of rules but the schema 1 rule, which
// applies only when a child is schema 1 (or an index, which may have one).
func applicableToIndex(m cache.Manifest, rules ruleset.Set) ruleset.Set {
	children, err := rewrite.IndexChildren(m.MediaType, m.Content)
	if err != nil {
		return rules // invalid: the engine says so once, as a verdict
	}
	for _, c := range children {
		if schema1.Is(c.MediaType) || rewrite.IsIndex(c.MediaType) {
			return rules
		}
	}
	rules.Schema1 = false
	return rules
}

// MayNeed is the pure, I/O-free first look at m: whether rules may change
// it. For a client with no rule nothing does; with only the config media
// type rule (or the zstd media type rule), most manifests are clean and cost
// nothing more; with the layer rule, every image with layers needs its
// verdict.
func MayNeed(m cache.Manifest, rules ruleset.Set) bool { return mayNeed(m, rules, 0) }

func mayNeed(m cache.Manifest, rules ruleset.Set, depth int) bool {
	if rewrite.IsIndex(m.MediaType) && depth >= MaxIndexDepth {
		return false
	}
	return !Applicable(m, rules).Empty()
}

// Applicable is the part of rules that may change m, judged from m alone:
// for an image manifest, the config media type rule if its config is
// declared octet-stream, the layer rule if it has a layer the rule reads,
// the zstd media type rule if it has a layer of Docker's zstd type, the
// zstd → gzip rule if it has a zstd layer, the layer media type rule if it
// has a layer declared as OCI's plain tar, the diff IDs rule if it has a
// layer and an image config (never the index sizes rule); for a
// schema 1 manifest, the schema 1 rule alone; for an index, every rule its
// children's types allow (the children, and for the index sizes rule their
// sizes, decide the rest). A variant is the original's
// under its applicable rules: clients whose rule sets differ only in rules
// that cannot touch an image share its verdict, its report entry and the
// work.
func Applicable(m cache.Manifest, rules ruleset.Set) ruleset.Set {
	switch {
	case rules.Empty():
		return rules
	case rewrite.IsIndex(m.MediaType):
		return applicableToIndex(m, rules)
	case schema1.Is(m.MediaType):
		return rules.Intersect(ruleset.Set{Schema1: true})
	case !rewrite.IsManifest(m.MediaType):
		return ruleset.Set{}
	}
	plan, err := rewrite.PlanManifest(m.MediaType, m.Content)
	if err != nil {
		return ruleset.Set{}
	}
	var may ruleset.Set
	may.ConfigMediaType = plan.ConfigMediaTypeSuspect
	// Whether the diff IDs are right cannot be told from the manifest: the
	// config of every image is read (see checkDiffIDs).
	may.DiffIDs = len(plan.Layers) > 0 && rewrite.IsImageConfigType(plan.Config.MediaType)
	for _, l := range plan.Layers {
		may.SymlinkXattrs = may.SymlinkXattrs || rewrite.IsScannableLayer(l.MediaType)
		may.GNUSparse = may.GNUSparse || rewrite.IsScannableLayer(l.MediaType)
		may.ZstdMediaType = may.ZstdMediaType || l.MediaType == rewrite.MediaTypeDockerLayerZstd
		may.ZstdGzip = may.ZstdGzip || isZstdLayer(l.MediaType)
		may.LayerMediaType = may.LayerMediaType || l.MediaType == ocispec.MediaTypeImageLayer
	}
	return rules.Intersect(may)
}

func (e *Engine) compute(ctx context.Context, src Source, m cache.Manifest, rules ruleset.Set, depth int) (Result, error) {
	start := time.Now()
	var res rewrite.Result
	var notes []cache.Change // what the report says beside the changes
	var untouched untouchedLayers
	var err error
	switch {
	case schema1.Is(m.MediaType):
		res, err = e.convertSchema1(ctx, src, m, &untouched)
	case rewrite.IsManifest(m.MediaType):
		res, notes, err = e.normalizeImage(ctx, src, m, rules, &untouched)
	default:
		res, err = e.normalizeIndex(ctx, src, m, rules, depth, &untouched)
	}
	store := e.opts.Store
	verdict := cache.Normalization{Original: m.Digest, MediaType: m.MediaType, Rules: e.verdictKey(m, rules), Limited: untouched.limits(),
		CreatedAt: e.opts.Now().UTC()}
	out := m
	result := "clean"
	switch {
	case errors.Is(err, errInvalidContent):
		result = "invalid"
		// Content-addressed: the same bytes will be refused again, so the
		// clean verdict is recorded and the original served.
		e.m.RewriteErrors.WithLabelValues("invalid").Inc()
		e.log.Warn("manifest not normalizable, serving it untouched", "upstream", src.Upstream(), "repo", src.Repository(), "digest", m.Digest, "error", err)
	case err != nil:
		return Result{}, err
	case res.Changed():
		result = "normalized"
		out = cache.Manifest{MediaType: res.MediaType, Digest: res.Digest, Content: res.Content}
		// The record first: the new manifest belongs wherever its original
		// does, and only there.
		if err := store.PutDerived(ctx, cache.Derived{Digest: res.Digest, Kind: cache.DerivedManifest, Source: m.Digest}); err != nil {
			return Result{}, fmt.Errorf("record normalized manifest: %w", err)
		}
		if err := store.PutManifest(ctx, src.Upstream(), src.Repository(), out); err != nil {
			return Result{}, fmt.Errorf("cache normalized manifest: %w", err)
		}
		src.Learn(ctx, res.Digest, m.Digest)
		// The verdict names the variant: its digest and its type (a schema 1
		// original's variant is a Docker schema 2 manifest), as the report does.
		verdict.Normalized, verdict.MediaType = res.Digest, res.MediaType
		for _, c := range res.Changes {
			verdict.Changes = append(verdict.Changes, cache.Change{Kind: c.Kind, Path: c.Path, Old: c.Old, New: c.New, Details: c.Details, Unlisted: c.Unlisted})
			e.m.Rewrites.WithLabelValues(c.Kind).Inc()
		}
		e.log.Info("normalized manifest", "upstream", src.Upstream(), "repo", src.Repository(), "original", m.Digest, "rules", verdict.Rules,
			"normalized", res.Digest, "changes", len(res.Changes))
		// Normalizing a normalized manifest changes nothing: say so now (under
		// the key a lookup for it uses), so a pull by the new digest costs no
		// work.
		if again := Applicable(out, rules); !again.Empty() {
			if err := store.PutNormalization(ctx, cache.Normalization{Original: res.Digest, MediaType: res.MediaType,
				Rules: e.verdictKey(out, again), Limited: verdict.Limited, CreatedAt: verdict.CreatedAt}); err != nil {
				e.log.Error("caching normalization verdict failed", "digest", res.Digest, "error", err)
			}
		}
	}
	if err == nil && (res.Changed() || len(notes) > 0) {
		// Bounded before anyone sees it: the report takes it as it is.
		verdict.Changes, verdict.UnlistedChanges = cache.BoundChanges(append(verdict.Changes, notes...))
		e.opts.Reports.Add(cache.ReportEntry{Upstream: src.Upstream(), Repository: src.Repository(), Original: m.Digest, Rules: rules.Key(),
			Normalized: verdict.Normalized, MediaType: verdict.MediaType, Changes: verdict.Changes, UnlistedChanges: verdict.UnlistedChanges})
	}
	if err := store.PutNormalization(ctx, verdict); err != nil {
		e.log.Error("caching normalization verdict failed", "digest", m.Digest, "error", err)
	}
	e.m.NormalizeDuration.Observe(time.Since(start).Seconds())
	e.m.Normalizations.WithLabelValues(result).Inc()
	return Result{Manifest: out, Verdict: verdict}, nil
}

// normalizeImage applies the manifest rules of rules: it scans the layers
// (and repackages those that need it) only for the layer rule, and reads the
// config (through the cache, where containerd will find it next) only when
// a rule needs it.
//
// Beside the result, it returns the report's notes of the layers it left
// untouched, which it adds to untouched.
func (e *Engine) normalizeImage(ctx context.Context, src Source, m cache.Manifest, rules ruleset.Set, untouched *untouchedLayers) (rewrite.Result, []cache.Change, error) {
	plan, err := rewrite.PlanManifest(m.MediaType, m.Content)
	if err != nil {
		return rewrite.Result{}, nil, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	if plan.Config.Size > maxConfigSize {
		// Refused before any layer is fetched for nothing.
		return rewrite.Result{}, nil, fmt.Errorf("%w: config is %d bytes, more than %d", errInvalidContent, plan.Config.Size, maxConfigSize)
	}
	var layers map[digest.Digest]rewrite.LayerResult
	if rules.SymlinkXattrs || rules.GNUSparse {
		if layers, err = e.repackagedLayers(ctx, src, plan.Layers, rules, untouched); err != nil {
			return rewrite.Result{}, nil, err
		}
	}
	if rules.ZstdGzip {
		if layers, err = e.gzipLayers(ctx, src, plan.Layers, layers, untouched); err != nil {
			return rewrite.Result{}, nil, err
		}
	}
	var config []byte
	if (rules.ConfigMediaType && plan.ConfigMediaTypeSuspect) || len(layers) > 0 || rules.DiffIDs {
		if config, err = e.readBlob(ctx, src, plan.Config, maxConfigSize); err != nil {
			return rewrite.Result{}, nil, err
		}
	}
	known := map[digest.Digest]rewrite.Compression{}
	for d, l := range layers {
		known[d] = l.Compression // a repackaged layer keeps it
	}
	var diffIDs map[digest.Digest]digest.Digest
	if rules.DiffIDs {
		if diffIDs, err = e.checkDiffIDs(ctx, src, plan, config, rules, layers, known, untouched); err != nil {
			return rewrite.Result{}, nil, err
		}
	}
	var comps map[digest.Digest]rewrite.Compression
	if rules.LayerMediaType {
		if comps, err = e.tarCompressions(ctx, src, plan.Layers, known); err != nil {
			return rewrite.Result{}, nil, err
		}
	}
	res, err := rewrite.NormalizeManifest(rewrite.ManifestInput{MediaType: m.MediaType, Manifest: m.Content, Config: config,
		Layers: layers, KeepConfigMediaType: !rules.ConfigMediaType, RetypeDockerZstd: rules.ZstdMediaType,
		Compressions: comps, RetypeCompressedTar: rules.LayerMediaType, DiffIDs: diffIDs, FixDiffIDs: rules.DiffIDs})
	if err != nil {
		return rewrite.Result{}, nil, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	if res.Config != nil {
		if err := e.putConfig(ctx, res.Config, res.ConfigDesc.Digest, plan.Config.Digest, false); err != nil {
			return rewrite.Result{}, nil, fmt.Errorf("store new config: %w", err)
		}
		src.Learn(ctx, res.ConfigDesc.Digest, plan.Config.Digest)
	}
	for original, l := range layers {
		src.Learn(ctx, l.Digest, original)
	}
	return res, untouched.notes(plan.Layers), nil
}

// normalizeIndex normalizes the children of the configured platforms (a
// few at a time, stopping at the first that fails) and points the index at
// those that changed; with the index sizes rule, an entry that keeps its
// child gets the size of the child as fetched. The others are not read: each read is an upstream
// pull. The limits under which the children's verdicts left layers
// untouched go to untouched: the index's verdict depends on them.
func (e *Engine) normalizeIndex(ctx context.Context, src Source, m cache.Manifest, rules ruleset.Set, depth int, untouched *untouchedLayers) (rewrite.Result, error) {
	children, err := rewrite.IndexChildren(m.MediaType, m.Content)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	var read []ocispec.Descriptor
	for _, child := range children {
		if (rewrite.IsManifest(child.MediaType) || rewrite.IsIndex(child.MediaType) || schema1.Is(child.MediaType)) && e.opts.Platforms.reads(child) {
			read = append(read, child)
		}
	}
	var mu sync.Mutex
	changed := map[digest.Digest]ocispec.Descriptor{}
	sizes := map[digest.Digest]int64{} // only sizes: an index holds no child's bytes
	err = fewAtATime(ctx, childFetches, read, func(ctx context.Context, child ocispec.Descriptor) error {
		cm, err := src.Manifest(ctx, child.Digest)
		if err != nil {
			return fmt.Errorf("child manifest %s: %w", child.Digest, err)
		}
		if rules.IndexSizes && !schema1.Is(cm.MediaType) {
			// Verified against its digest on the way in, and again here:
			// the index sizes rule gives the entry its size. (A schema 1
			// child's digest is not that of its bytes, which differ
			// between reads.)
			size, err := rewrite.VerifiedSize(child.Digest, cm.Content)
			if err != nil {
				return err // not the image's fault: the read was wrong
			}
			mu.Lock()
			sizes[child.Digest] = size
			mu.Unlock()
		}
		n, err := e.normalize(ctx, src, cm, rules, depth+1)
		if err != nil {
			return err
		}
		untouched.addLimits(n.Verdict.Limited)
		if n.Changed() {
			mu.Lock()
			changed[child.Digest] = ocispec.Descriptor{MediaType: n.Manifest.MediaType, Digest: n.Manifest.Digest, Size: int64(len(n.Manifest.Content))}
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return rewrite.Result{}, err
	}
	res, err := rewrite.NormalizeIndex(rewrite.IndexInput{MediaType: m.MediaType, Index: m.Content, Children: changed,
		Sizes: sizes, FixSizes: rules.IndexSizes})
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	return res, nil
}

// readBlob reads a small blob a rule builds on, through the source,
// verified against its digest as it is read.
func (e *Engine) readBlob(ctx context.Context, src Source, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%w: blob %s is %d bytes, more than %d", errInvalidContent, desc.Digest, desc.Size, limit)
	}
	content, err := readBlobOnce(ctx, src, desc, limit)
	if damaged(err) {
		// The cached copy failed verification and is gone: fetch it again.
		e.log.Warn("cached blob failed verification; fetching it again", "repo", src.Repository(), "digest", desc.Digest, "error", err)
		content, err = readBlobOnce(ctx, src, desc, limit)
	}
	return content, err
}

func readBlobOnce(ctx context.Context, src Source, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	b, err := openVerified(ctx, src, desc.Digest)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	content, err := io.ReadAll(io.LimitReader(b, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", desc.Digest, err)
	}
	if int64(len(content)) > limit {
		return nil, fmt.Errorf("%w: blob %s is larger than %d bytes", errInvalidContent, desc.Digest, limit)
	}
	return content, nil
}

// errUnverified is a blob whose bytes do not match its digest.
var errUnverified = errors.New("content does not match its digest")

// openVerified opens dgst through src and checks what is read against the
// digest once more: whatever a rule builds on, and publishes under a new
// digest, is verified by the engine itself, whatever the source did. A short
// or wrong read is an error at its end, never a clean end of stream.
func openVerified(ctx context.Context, src Source, dgst digest.Digest) (io.ReadCloser, error) {
	if err := dgst.Validate(); err != nil {
		return nil, err
	}
	rc, err := src.OpenBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{rc: rc, dgst: dgst, v: dgst.Verifier()}, nil
}

type verifyingReader struct {
	rc   io.ReadCloser
	dgst digest.Digest
	v    digest.Verifier
}

func (r *verifyingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.v.Write(p[:n])
	if err == io.EOF && !r.v.Verified() {
		return n, fmt.Errorf("blob %s: %w", r.dgst, errUnverified)
	}
	return n, err
}

func (r *verifyingReader) Close() error { return r.rc.Close() }

// damaged reports whether err is a cached blob that failed verification
// as it was read. The cache has removed it, so the next read fetches it.
func damaged(err error) bool { return errors.Is(err, cache.ErrDamaged) }

// Names is what m names, read as the engine reads it: an image manifest's
// config and layers (blobs), an index's children (manifests). A document
// the engine does not read (schema 1, an invalid one) names nothing.
func Names(m cache.Manifest) (blobs, children []digest.Digest) {
	switch {
	case rewrite.IsManifest(m.MediaType):
		plan, err := rewrite.PlanManifest(m.MediaType, m.Content)
		if err != nil {
			return nil, nil
		}
		blobs = append(blobs, plan.Config.Digest)
		for _, l := range plan.Layers {
			blobs = append(blobs, l.Digest)
		}
	case rewrite.IsIndex(m.MediaType):
		descs, err := rewrite.IndexChildren(m.MediaType, m.Content)
		if err != nil {
			return nil, nil
		}
		for _, d := range descs {
			children = append(children, d.Digest)
		}
	}
	return blobs, children
}
