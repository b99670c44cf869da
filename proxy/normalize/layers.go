package normalize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// scanVersion is the version of the layer scan: 1 counts GNU sparse
// entries. A verdict of an older scan says nothing of them, and is made
// again (once) for a rule set with the sparse rule.
const scanVersion = 1

// repackagedLayers returns the repackaged form of every layer that the
// layer rules of rules (symlink xattrs, GNU sparse) change, fetching and
// scanning layers a few at a time (stopping at the first that fails), and
// adds those it leaves untouched to untouched, with the reason. Each layer
// is repackaged as rules ask and only so (layerTransform): one scan for
// both rules, one repackaging of each kind a rule set asks for.
// Verdicts come from the cache when another pull, replica or earlier
// process already scanned the layer.
func (e *Engine) repackagedLayers(ctx context.Context, src Source, layers []ocispec.Descriptor, rules ruleset.Set, untouched *untouchedLayers) (map[digest.Digest]rewrite.LayerResult, error) {
	var scan []ocispec.Descriptor
	for _, desc := range layers {
		if rewrite.IsScannableLayer(desc.MediaType) {
			scan = append(scan, desc)
		}
	}
	var mu sync.Mutex
	fixes := map[digest.Digest]rewrite.LayerResult{}
	err := fewAtATime(ctx, layerFetches, scan, func(ctx context.Context, desc ocispec.Descriptor) error {
		v, err := e.layerVerdict(ctx, src, desc.Digest, rules.GNUSparse)
		if err != nil {
			return err
		}
		untouched.add(desc.Digest, v.Skipped, v.Limit)
		t := layerTransform(rules, v)
		if v.Skipped != "" || !t.Rewrites() {
			return nil
		}
		res, skip, limit, err := e.madeLayer(ctx, src, v, t)
		if err != nil {
			return err
		}
		if skip != "" {
			untouched.add(desc.Digest, skip, limit)
			return nil
		}
		mu.Lock()
		fixes[desc.Digest] = res
		mu.Unlock()
		return nil
	})
	return fixes, err
}

// layerTransform is what rules ask of the layer v judged: the symlink
// rule's stripping if it has xattrs to strip, the sparse rule's expansion
// if it has GNU sparse entries; nothing else. Stripping cannot leave a
// sparse entry as it is (archive/tar writes it expanded either way), so a
// layer both rules change is the symlink rule's one repackaging.
func layerTransform(rules ruleset.Set, v cache.LayerVerdict) rewrite.LayerTransform {
	strip := rules.SymlinkXattrs && len(v.Removals)+v.Unlisted > 0
	return rewrite.LayerTransform{Strip: strip, Expand: !strip && rules.GNUSparse && v.Sparse > 0}
}

// madeLayer is layer v repackaged as t says: the symlink rule's own
// (v.Repacked, made with the scan) or one of v.Made, else made now from
// the cached original and recorded in the verdict. When it is not made
// (beyond a bound of a made layer, or the layer is no tar after all), skip
// says why and limit under which limit.
func (e *Engine) madeLayer(ctx context.Context, src Source, v cache.LayerVerdict, t rewrite.LayerTransform) (res rewrite.LayerResult, skip string, limit int64, err error) {
	key := t.Key()
	if key == "" && v.Repacked != "" {
		return layerResult(v, t, cache.MadeLayer{Digest: v.Repacked, Size: v.Size, DiffID: v.DiffID}), "", 0, nil
	}
	if m, ok := madeAs(v, key); ok && !e.raisedLimit(m.Skipped, m.Limit) {
		if m.Skipped != "" {
			return rewrite.LayerResult{}, m.Skipped, m.Limit, nil
		}
		return layerResult(v, t, m), "", 0, nil
	}
	got, err, _ := e.layers.Do("make "+key+" "+v.Original.String()+" "+src.Identity(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.Timeout)
		defer cancel()
		return e.makeLayer(ctx, src, v.Original, t)
	})
	if err != nil {
		return rewrite.LayerResult{}, "", 0, err
	}
	m := got.(cache.MadeLayer)
	if m.Skipped != "" {
		return rewrite.LayerResult{}, m.Skipped, m.Limit, nil
	}
	return layerResult(v, t, m), "", 0, nil
}

// makeLayer repackages layer dgst as t says and records the outcome in its
// verdict, a repackaging beyond a bound as such.
func (e *Engine) makeLayer(ctx context.Context, src Source, dgst digest.Digest, t rewrite.LayerTransform) (cache.MadeLayer, error) {
	m := cache.MadeLayer{Transform: t.Key()}
	res, err := e.transformLayer(ctx, src, dgst, t)
	if reason := skipReason(err); reason != "" {
		// Repackaged, it would be beyond the bound of a made layer (a
		// sparse file that expands past normalize.maxLayerSize, say).
		e.m.LayersSkipped.WithLabelValues(reason).Inc()
		e.log.Warn("layer left untouched", "repo", src.Repository(), "digest", dgst, "transform", m.Transform, "reason", reason, "error", err)
		m.Skipped, m.Limit = reason, e.limitOf(reason)
	} else if err != nil {
		return cache.MadeLayer{}, err
	} else {
		m.Digest, m.Size, m.DiffID = res.Digest, res.Size, res.DiffID
		e.log.Info("repackaged layer", "repo", src.Repository(), "original", dgst, "repacked", res.Digest, "transform", m.Transform,
			"entries_stripped", res.Stripped, "entries_expanded", res.Sparse)
	}
	// Recorded in the verdict as it is now (another transform may have
	// been added meanwhile); a lost record only costs a repackaging.
	if v, err := e.opts.Store.GetLayerVerdict(ctx, dgst); err == nil {
		if m.Transform == "" && m.Digest != "" {
			v.Repacked, v.Size, v.DiffID = m.Digest, m.Size, m.DiffID
		} else {
			v.Made = append(slices.DeleteFunc(v.Made, func(o cache.MadeLayer) bool { return o.Transform == m.Transform }), m)
		}
		if err := e.opts.Store.PutLayerVerdict(ctx, v); err != nil {
			e.log.Error("recording a repackaged layer in its verdict failed", "digest", dgst, "transform", m.Transform, "error", err)
		}
	}
	return m, nil
}

// madeAs is v's repackaging as key says, if it has one.
func madeAs(v cache.LayerVerdict, key string) (cache.MadeLayer, bool) {
	i := slices.IndexFunc(v.Made, func(m cache.MadeLayer) bool { return m.Transform == key })
	if i < 0 {
		return cache.MadeLayer{}, false
	}
	return v.Made[i], true
}

// KindLayerUntouched is the report's note of a layer a rule would read
// that was left as upstream has it; its details say why. It is not a
// change: the manifest may be served unchanged with it.
const KindLayerUntouched = "layer-untouched"

// untouchedWhy is what the report says of a layer left untouched, by reason.
var untouchedWhy = map[string]string{
	"not-tar":     "not a tar stream regnorm reads: served as upstream has it",
	"too-large":   "decompresses (or, rewritten with its sparse files expanded, writes) beyond normalize.maxLayerSize, or rewritten would be larger than maxBlobSize: served as upstream has it",
	"zstd-window": "a zstd frame declares a window beyond normalize.maxZstdWindow: served as upstream has it",
	"amplifies": fmt.Sprintf("rewritten would be more than %d times its size and %d MiB, or fill more than %d times its size and %d MiB of sparse files' holes: served as upstream has it",
		madeRatio, madeSlack>>20, holeRatio, holeSlack>>20),
}

// untouchedLayers collects the layers of one image left untouched, and
// why; and the limits under which any layer a verdict depends on was left
// untouched (its own, or for an index its children's), which the verdict
// records.
type untouchedLayers struct {
	mu      sync.Mutex
	reason  map[digest.Digest]string
	limited cache.LayerLimits
}

// add notes layer dgst left untouched for reason (none: it was not), under
// limit when the reason is a limit.
func (u *untouchedLayers) add(dgst digest.Digest, reason string, limit int64) {
	if reason == "" {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.reason == nil {
		u.reason = map[digest.Digest]string{}
	}
	u.reason[dgst] = reason
	switch reason {
	case "zstd-window":
		u.limited = u.limited.Min(cache.LayerLimits{ZstdWindow: limit})
	case "too-large":
		u.limited = u.limited.Min(cache.LayerLimits{LayerSize: limit})
	}
}

// addLimits notes the limits a verdict this one depends on was made under.
func (u *untouchedLayers) addLimits(l cache.LayerLimits) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.limited = u.limited.Min(l)
}

// limits are the limits under which the layers were left untouched.
func (u *untouchedLayers) limits() cache.LayerLimits {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.limited
}

func (u *untouchedLayers) has(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.reason[dgst]
	return ok
}

// notes are the report's notes of the untouched layers among layers: one
// per layer digest, at its first place, however often the manifest lists
// it.
func (u *untouchedLayers) notes(layers []ocispec.Descriptor) []cache.Change {
	var out []cache.Change
	noted := map[digest.Digest]bool{}
	for i, desc := range layers {
		if reason, ok := u.reason[desc.Digest]; ok && !noted[desc.Digest] {
			noted[desc.Digest] = true
			out = append(out, cache.Change{Kind: KindLayerUntouched, Path: fmt.Sprintf("layers[%d]", i), Old: desc.Digest.String(),
				New: desc.Digest.String(), Details: []string{reason + ": " + untouchedWhy[reason]}})
		}
	}
	return out
}

// layerRecord is the verdict recorded of layer dgst, for a client that may
// read the layer here (Source.Admit): the record holds what the layer's
// bytes say (its entries, its diff ID, its compression, what was made of
// it), and the image that names dgst may be another repository's. A
// client that may not read it gets the admission's error; no record is
// cache.ErrNotFound.
func (e *Engine) layerRecord(ctx context.Context, src Source, dgst digest.Digest) (cache.LayerVerdict, error) {
	v, err := e.opts.Store.GetLayerVerdict(ctx, dgst)
	if err != nil {
		return cache.LayerVerdict{}, err
	}
	if err := src.Admit(ctx, dgst); err != nil {
		return cache.LayerVerdict{}, err
	}
	return v, nil
}

// layerVerdict scans one layer once, however many images and requests
// want it; again only when it was left untouched for a limit that has been
// raised since, or when the verdict's scan did not count GNU sparse
// entries and either sparse says the sparse rule asks (a verdict recorded
// before that rule is not a layer without them) or the verdict holds a
// symlink repackaging (which wrote such entries as broken 'S' headers, and
// which this version, rebuilding it after an eviction, would not make
// again byte for byte).
func (e *Engine) layerVerdict(ctx context.Context, src Source, dgst digest.Digest, sparse bool) (cache.LayerVerdict, error) {
	old, err := e.layerRecord(ctx, src, dgst)
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return cache.LayerVerdict{}, err
	}
	current := old.Scan >= scanVersion || old.Skipped != "" || (!sparse && old.Repacked == "")
	if err == nil && !e.raised(old) && current {
		return old, nil
	}
	v, err, _ := e.layers.Do(dgst.String()+" "+src.Identity(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.Timeout)
		defer cancel()
		return e.computeLayerVerdict(ctx, src, dgst)
	})
	if err != nil {
		return cache.LayerVerdict{}, err
	}
	return v.(cache.LayerVerdict), nil
}

func (e *Engine) computeLayerVerdict(ctx context.Context, src Source, dgst digest.Digest) (cache.LayerVerdict, error) {
	v := cache.LayerVerdict{Original: dgst, CreatedAt: e.opts.Now().UTC(), Scan: scanVersion}
	// A verdict of an older scan keeps its symlink repackaging, unless the
	// layer has sparse entries: that scan's repackaging wrote them as
	// broken 'S' headers, and is made anew.
	old, oerr := e.opts.Store.GetLayerVerdict(ctx, dgst)
	scan, err := e.scanLayer(ctx, src, dgst)
	switch reason := skipReason(err); {
	case reason != "":
		// Not a tar regnorm reads, or beyond a limit: served as it is, and
		// not scanned again (under a larger limit, it is).
		return e.skipLayer(ctx, src, v, reason, err)
	case err != nil:
		return cache.LayerVerdict{}, err
	}
	v.Compression, v.Entries, v.OriginalDiffID = string(scan.Compression), scan.Entries, scan.OriginalDiffID
	v.Sparse, v.Expanded = scan.Sparse, scan.Expanded
	kept := oerr == nil && old.Skipped == "" && old.Repacked != "" && scan.Sparse == 0
	if kept {
		// Only while it can be had: in the cache, or evicted with the
		// record it is rebuilt from (the same bytes, the layer having no
		// sparse entries); else it is made again.
		if _, err := e.opts.Store.StatBlob(ctx, old.Repacked); err != nil {
			d, derr := e.opts.Store.GetDerived(ctx, old.Repacked)
			kept = derr == nil && d.Kind == cache.DerivedLayer && d.Source == dgst && d.Transform == ""
		}
	}
	switch {
	case scan.Stripped == 0:
	case kept:
		v.Repacked, v.Size, v.DiffID, v.Removals, v.Unlisted = old.Repacked, old.Size, old.DiffID, old.Removals, old.Unlisted
	default:
		// The symlink rule's repackaging is made with the scan, as before
		// the sparse rule: a replica of an earlier version reads the
		// verdict as it always did.
		res, err := e.repackFromOriginal(ctx, src, dgst, "", rewrite.LayerTransform{Strip: true})
		if reason := skipReason(err); reason != "" {
			// Repackaged, it would be beyond the bound of a made layer.
			return e.skipLayer(ctx, src, v, reason, err)
		}
		if err != nil {
			return cache.LayerVerdict{}, err
		}
		if err := e.opts.Store.PutDerived(ctx, cache.Derived{Digest: res.Digest, Kind: cache.DerivedLayer, Source: dgst}); err != nil {
			return cache.LayerVerdict{}, fmt.Errorf("record repackaged layer: %w", err)
		}
		v.Repacked, v.Size, v.DiffID = res.Digest, res.Size, res.DiffID
		for _, r := range res.Removals {
			v.Removals = append(v.Removals, cache.XattrRemoval(r))
		}
		v.Unlisted = res.Unlisted()
		e.log.Info("repackaged layer", "repo", src.Repository(), "original", dgst, "repacked", res.Digest, "entries_stripped", res.Stripped,
			"entries_expanded", res.Sparse)
	}
	if err := e.opts.Store.PutLayerVerdict(ctx, v); err != nil {
		return cache.LayerVerdict{}, fmt.Errorf("record layer verdict: %w", err)
	}
	return v, nil
}

// skipLayer records v's layer as left untouched, for reason.
func (e *Engine) skipLayer(ctx context.Context, src Source, v cache.LayerVerdict, reason string, err error) (cache.LayerVerdict, error) {
	e.m.LayersSkipped.WithLabelValues(reason).Inc()
	e.log.Warn("layer left untouched", "repo", src.Repository(), "digest", v.Original, "reason", reason, "error", err)
	v.Skipped, v.Limit = reason, e.limitOf(reason)
	return v, e.opts.Store.PutLayerVerdict(ctx, v)
}

// scanLayer reads a layer, fetched through the source, for what the
// symlink xattr rule would remove.
func (e *Engine) scanLayer(ctx context.Context, src Source, dgst digest.Digest) (rewrite.LayerScan, error) {
	var scan rewrite.LayerScan
	_, err := e.readLayer(ctx, src, dgst, func(r io.Reader) (err error) {
		scan, err = rewrite.ScanLayer(r, e.limits())
		return err
	})
	return scan, err
}

// readLayer reads layer dgst, fetched through src into the cache and read
// from there verified, and hands the stream to read. Whatever read
// concludes counts only once the whole blob has verified: what read leaves
// is read too, and a short or wrong blob is an error, never a verdict. A
// cached copy that fails verification, or that was evicted before it was
// opened, is fetched again, once. It returns the blob's size.
func (e *Engine) readLayer(ctx context.Context, src Source, dgst digest.Digest, read func(io.Reader) error) (int64, error) {
	n, err := e.readLayerOnce(ctx, src, dgst, read)
	if damaged(err) || errors.Is(err, errGone) {
		e.log.Warn("cached layer failed verification or went; fetching it again", "repo", src.Repository(), "digest", dgst, "error", err)
		n, err = e.readLayerOnce(ctx, src, dgst, read)
	}
	return n, err
}

// errGone is a layer that left the cache between its fetch and its read
// (evicted meanwhile).
var errGone = errors.New("layer left the cache before it was read")

func (e *Engine) readLayerOnce(ctx context.Context, src Source, dgst digest.Digest, read func(io.Reader) error) (int64, error) {
	// The download first, holding no turn: downloads are bounded on their
	// own (a queue, and a share of it per upstream), and an upstream that
	// answers slowly must hold only its own share of them, never the turns
	// that every other upstream's layers wait for.
	if err := src.Ensure(ctx, dgst); err != nil {
		return 0, err
	}
	// Then the turn, before the layer is opened: work that waits holds no
	// decoder.
	ctx, done, err := e.work.turn(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	rc, _, err := e.opts.Store.OpenVerified(ctx, dgst)
	if errors.Is(err, cache.ErrNotFound) {
		return 0, fmt.Errorf("read layer %s: %w: %w", dgst, errGone, err)
	}
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	counted := &countingReader{r: rc}
	err = read(counted)
	if _, rerr := io.Copy(io.Discard, counted); rerr != nil {
		return counted.n, fmt.Errorf("read layer %s: %w", dgst, rerr)
	}
	e.m.LayersScanned.Inc()
	e.m.BytesScanned.Add(float64(counted.n))
	return counted.n, err
}

// repackLayer writes the layer transformed as t says into the cache as a
// new blob, from the cached original, verified as it is read. want, when
// set, is the digest the result must have (a rebuild). The new blob is
// bounded by madeBound: past it, the write stops and nothing of it stays.
func (e *Engine) repackLayer(ctx context.Context, dgst, want digest.Digest, t rewrite.LayerTransform) (rewrite.LayerResult, error) {
	ctx, done, err := e.work.turn(ctx)
	if err != nil {
		return rewrite.LayerResult{}, err
	}
	defer done()
	store := e.opts.Store
	rc, info, err := store.OpenVerified(ctx, dgst)
	if errors.Is(err, cache.ErrNotFound) {
		return rewrite.LayerResult{}, fmt.Errorf("repackage layer %s: %w: %w", dgst, errGone, err)
	}
	if err != nil {
		return rewrite.LayerResult{}, err
	}
	defer rc.Close()
	var in *cache.Ingest
	if want != "" {
		in, err = store.IngestBlob(ctx, want, -1)
	} else {
		in, err = store.NewBlob(ctx)
	}
	if err != nil {
		return rewrite.LayerResult{}, err
	}
	out := boundMade(in, info.Size, e.opts.MaxMadeSize)
	lim := e.limits()
	if want == "" {
		// A new layer's holes and size are bounded; a rebuild's bytes are
		// pinned by want, made by a version that may have had no such
		// bounds, and must come out the same (its read stays bounded).
		lim.Holes = holesBound(info.Size)
	} else {
		lim.Unwritten = true
	}
	res, err := rewrite.TransformLayer(out, rc, lim, t)
	if err != nil {
		if crossed := out.crossed(); crossed != nil {
			err = crossed // whatever the write's failure became on its way
		}
		// The layer may have stopped the read early (at a bad header, or at
		// the bound, say): read the rest, so that a damaged original says
		// so and is fetched again, rather than failing every rebuild for
		// good, and a verdict is on a verified original.
		if _, rerr := io.Copy(io.Discard, rc); damaged(rerr) {
			err = rerr
		}
		return rewrite.LayerResult{}, errors.Join(fmt.Errorf("repackage layer %s: %w", dgst, err), in.Cancel(ctx))
	}
	if err := in.Commit(ctx); err != nil {
		return rewrite.LayerResult{}, err
	}
	if in.Digest() != res.Digest {
		return rewrite.LayerResult{}, fmt.Errorf("repackaged layer %s: stored as %s, computed %s", dgst, in.Digest(), res.Digest)
	}
	e.m.LayersRepackaged.Inc()
	e.m.BytesRepackaged.Add(float64(res.Size))
	e.opts.Ingested(res.Size)
	return res, nil
}

// repackFromOriginal repackages the cached layer dgst. If the cached copy
// fails verification (it is then removed), or was evicted since it was
// fetched, the layer is fetched again through the source (holding no turn)
// and repackaged from that.
func (e *Engine) repackFromOriginal(ctx context.Context, src Source, dgst, want digest.Digest, t rewrite.LayerTransform) (rewrite.LayerResult, error) {
	res, err := e.repackLayer(ctx, dgst, want, t)
	if !damaged(err) && !errors.Is(err, errGone) {
		return res, err
	}
	e.log.Warn("cached layer failed verification or went; fetching it again", "repo", src.Repository(), "digest", dgst, "error", err)
	if err := src.Ensure(ctx, dgst); err != nil {
		return rewrite.LayerResult{}, err
	}
	return e.repackLayer(ctx, dgst, want, t)
}

// RebuildLayer makes an evicted repackaged layer d again from its original,
// fetched again through src if it was evicted too; the caller has admitted
// src's client for the original. Repackaging is deterministic, and the
// ingest verifies the result against the digest clients ask for.
func (e *Engine) RebuildLayer(ctx context.Context, src Source, d cache.Derived) error {
	_, err, _ := e.layers.Do("rebuild "+d.Digest.String()+" "+src.Identity(), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.Timeout)
		defer cancel()
		if _, err := e.opts.Store.StatBlob(ctx, d.Digest); err == nil {
			return nil, nil // rebuilt meanwhile
		}
		if err := src.Ensure(ctx, d.Source); err != nil {
			return nil, err
		}
		t, err := rewrite.ParseLayerTransform(d.Transform)
		if err != nil {
			return nil, err
		}
		if _, err := e.repackFromOriginal(ctx, src, d.Source, d.Digest, t); err != nil {
			if errors.Is(err, cache.ErrDigestMismatch) && !damaged(err) {
				e.log.Error("a rebuild made other bytes than the repackaged layer clients ask for: was it made by another regnorm version?",
					"digest", d.Digest, "source", d.Source, "error", err)
			}
			return nil, fmt.Errorf("rebuild repackaged layer %s: %w", d.Digest, err)
		}
		e.m.Rebuilds.Inc()
		e.log.Info("rebuilt an evicted repackaged layer", "digest", d.Digest, "source", d.Source)
		return nil, nil
	})
	return err
}

// putConfig stores a config made from source (a config blob, or for a
// converted schema 1 image its manifest). It is retained first, so that it
// is never evictable, not even for a moment: nothing could make it again on
// demand.
func (e *Engine) putConfig(ctx context.Context, content []byte, want, source digest.Digest, fromManifest bool) error {
	store := e.opts.Store
	if err := store.Retain(ctx, want); err != nil {
		return err
	}
	if err := store.PutDerived(ctx, cache.Derived{Digest: want, Kind: cache.DerivedConfig, Source: source, FromManifest: fromManifest}); err != nil {
		return err
	}
	in, err := store.NewBlob(ctx)
	if err != nil {
		return err
	}
	if _, err := in.Write(content); err != nil {
		return errors.Join(err, in.Cancel(ctx))
	}
	if err := in.Commit(ctx); err != nil {
		return err
	}
	if in.Digest() != want {
		return fmt.Errorf("stored blob as %s, want %s", in.Digest(), want)
	}
	e.opts.Ingested(in.Size())
	return nil
}

// layerResult is layer v made as t says (m): what t stripped and
// expanded, as v's scan found it. Any rewrite writes the sparse entries
// expanded.
func layerResult(v cache.LayerVerdict, t rewrite.LayerTransform, m cache.MadeLayer) rewrite.LayerResult {
	res := rewrite.LayerResult{Digest: m.Digest, Size: m.Size, DiffID: m.DiffID, Transform: t}
	res.Compression, res.Entries = rewrite.Compression(v.Compression), v.Entries
	if t.Strip {
		for _, r := range v.Removals {
			res.Removals = append(res.Removals, rewrite.XattrRemoval(r))
		}
		res.Stripped = len(res.Removals) + v.Unlisted
	}
	if t.Rewrites() {
		res.Sparse, res.Expanded = v.Sparse, v.Expanded
	}
	return res
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// gzipLayers recompresses every zstd layer of layers with gzip, for the
// zstd → gzip rule, a few at a time: byte for byte when the layer rules
// left it alone, or repackaged and gzipped in one pass, as the layer
// rules' transform of it in stripped says; the first layer that fails
// stops the rest. It returns stripped with those
// layers replaced and added, each with its new media type.
func (e *Engine) gzipLayers(ctx context.Context, src Source, layers []ocispec.Descriptor, stripped map[digest.Digest]rewrite.LayerResult, untouched *untouchedLayers) (map[digest.Digest]rewrite.LayerResult, error) {
	var mu sync.Mutex
	out := maps.Clone(stripped)
	if out == nil {
		out = map[digest.Digest]rewrite.LayerResult{}
	}
	var zstd []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	for _, desc := range layers {
		if isZstdLayer(desc.MediaType) && !seen[desc.Digest] && !untouched.has(desc.Digest) {
			// (one the scan left untouched is not read again)
			seen[desc.Digest] = true
			zstd = append(zstd, desc)
		}
	}
	err := fewAtATime(ctx, layerFetches, zstd, func(ctx context.Context, desc ocispec.Descriptor) error {
		t := stripped[desc.Digest].Transform // the layer rules' part, if any
		t.To = rewrite.Gzip
		res, err := e.transformLayer(ctx, src, desc.Digest, t)
		if skip := skipReason(err); skip != "" {
			// Not a tar regnorm reads, or beyond a limit: left as it is,
			// as the symlink rule leaves it.
			e.m.LayersSkipped.WithLabelValues(skip).Inc()
			e.log.Warn("layer left untouched", "repo", src.Repository(), "digest", desc.Digest, "reason", skip, "error", err)
			untouched.add(desc.Digest, skip, e.limitOf(skip))
			return nil
		}
		if err != nil {
			return err
		}
		res.MediaType = rewrite.LayerMediaType(desc.MediaType, rewrite.Gzip)
		mu.Lock()
		out[desc.Digest] = res
		mu.Unlock()
		return nil
	})
	return out, err
}

// transformLayer makes layer dgst transformed as t says, and records how,
// so that it can be rebuilt when evicted.
func (e *Engine) transformLayer(ctx context.Context, src Source, dgst digest.Digest, t rewrite.LayerTransform) (rewrite.LayerResult, error) {
	if err := src.Ensure(ctx, dgst); err != nil {
		return rewrite.LayerResult{}, err
	}
	res, err := e.repackFromOriginal(ctx, src, dgst, "", t)
	if err != nil {
		return rewrite.LayerResult{}, fmt.Errorf("%s layer %s: %w", t.Key(), dgst, err)
	}
	if err := e.opts.Store.PutDerived(ctx, cache.Derived{Digest: res.Digest, Kind: cache.DerivedLayer, Source: dgst, Transform: t.Key()}); err != nil {
		return rewrite.LayerResult{}, fmt.Errorf("record %s layer: %w", t.Key(), err)
	}
	return res, nil
}

// skipReason is why a layer is left as it is, from the error reading it
// or making another from it ended with: "not-tar", "too-large",
// "zstd-window", "amplifies", or "" for any other outcome.
func skipReason(err error) string {
	switch {
	case errors.Is(err, rewrite.ErrNotTar):
		return "not-tar"
	case errors.Is(err, rewrite.ErrLayerTooLarge), errors.Is(err, errMadeTooLarge):
		return "too-large"
	case errors.Is(err, rewrite.ErrZstdWindow):
		return "zstd-window"
	case errors.Is(err, errAmplifies), errors.Is(err, rewrite.ErrHolesBeyondLimit):
		return "amplifies"
	}
	return ""
}

// SkipReasons are every reason skipReason gives.
var SkipReasons = []string{"not-tar", "too-large", "zstd-window", "amplifies"}

// limits are what reading one layer may take.
func (e *Engine) limits() rewrite.Limits {
	return rewrite.Limits{Size: e.opts.MaxLayerSize, ZstdWindow: e.opts.MaxZstdWindow}
}

// current are the limits in force, as verdicts record them.
func (e *Engine) current() cache.LayerLimits {
	return cache.LayerLimits{ZstdWindow: e.opts.MaxZstdWindow, LayerSize: e.opts.MaxLayerSize}
}

// limitOf is the limit a layer left untouched for reason was judged
// under: 0 when reason is not a limit.
func (e *Engine) limitOf(reason string) int64 {
	switch reason {
	case "zstd-window":
		return e.current().ZstdWindow
	case "too-large":
		return e.current().LayerSize
	}
	return 0
}

// raised reports whether v left its layer untouched for a limit that is
// larger now (or that it does not record: written before limits were).
func (e *Engine) raised(v cache.LayerVerdict) bool { return e.raisedLimit(v.Skipped, v.Limit) }

// raisedLimit reports whether something left untouched for reason under
// limit (0: not recorded) may be made now.
func (e *Engine) raisedLimit(reason string, limit int64) bool {
	now := e.limitOf(reason)
	return now > 0 && (limit == 0 || now > limit)
}

// isZstdLayer reports whether mediaType is a zstd layer containerd unpacks.
func isZstdLayer(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageLayerZstd || mediaType == rewrite.MediaTypeDockerLayerZstd
}

// tarCompressions is the compression of every layer of layers declared as
// OCI's plain tar, for the layer media type rule, read a few at a time (the
// first that fails stops the rest): what a scan, repackaging or diff ID
// read already found (known, or a layer verdict), else the layer's first
// bytes.
func (e *Engine) tarCompressions(ctx context.Context, src Source, layers []ocispec.Descriptor, known map[digest.Digest]rewrite.Compression) (map[digest.Digest]rewrite.Compression, error) {
	out := map[digest.Digest]rewrite.Compression{}
	var read []ocispec.Descriptor
	for _, desc := range layers {
		if desc.MediaType != ocispec.MediaTypeImageLayer || len(desc.URLs) > 0 {
			continue // a layer with urls is not the upstream's to give
		}
		if _, done := out[desc.Digest]; done || slices.ContainsFunc(read, func(d ocispec.Descriptor) bool { return d.Digest == desc.Digest }) {
			continue
		}
		if c := known[desc.Digest]; c != "" {
			out[desc.Digest] = c
			continue
		}
		read = append(read, desc)
	}
	var mu sync.Mutex
	err := fewAtATime(ctx, layerFetches, read, func(ctx context.Context, desc ocispec.Descriptor) error {
		comp, err := e.layerCompression(ctx, src, desc.Digest)
		if err != nil {
			return err
		}
		mu.Lock()
		out[desc.Digest] = comp
		mu.Unlock()
		return nil
	})
	return out, err
}

// layerCompression is how layer dgst's blob is compressed. The answer is
// built upon, so it is taken from verified bytes only: a layer verdict
// (its scan read the blob whole, verified), else the blob's first bytes,
// read through the source into the cache and from there verified as the
// rest is read (readLayer): a blob that fails its digest gives no answer,
// however right its first bytes looked.
func (e *Engine) layerCompression(ctx context.Context, src Source, dgst digest.Digest) (rewrite.Compression, error) {
	switch v, err := e.layerRecord(ctx, src, dgst); {
	case err == nil && v.Compression != "":
		return rewrite.Compression(v.Compression), nil
	case err != nil && !errors.Is(err, cache.ErrNotFound):
		return "", err
	}
	var comp rewrite.Compression
	_, err := e.readLayer(ctx, src, dgst, func(r io.Reader) (err error) {
		comp, err = rewrite.DetectCompression(r)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read layer %s: %w", dgst, err)
	}
	return comp, nil
}
