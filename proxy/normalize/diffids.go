package normalize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// checkDiffIDs is the diff IDs rule's work for one image: the diff IDs of
// the layers worth knowing, computed from verified blobs only. Those are
// the layers the config alone makes suspect (rewrite.CheckDiffIDs: every
// layer when the list's length is wrong), and the layers another rule of
// rules reads anyway (the layer scans of the symlink and sparse rules
// record the diff ID; the
// layer media type rule reads its layers whole; a zstd layer recompressed
// byte for byte keeps its tar). Which layers are checked depends on the
// image and the rule set alone, never on what the cache happens to hold, so
// every mirror makes the same variant; the cache only spares reads.
//
// A diff ID comes from a repackaging (layers), else from the layer's
// verdict, else from reading the layer (fetched through src into the
// cache, verified whole: rewrite.LayerDiffID, schema 1 conversion's
// mechanism). A read also gives the layer's compression, added to comps.
// A layer regnorm cannot read (not a tar, beyond a limit) has no diff ID
// and is noted as untouched: its config entry stays.
func (e *Engine) checkDiffIDs(ctx context.Context, src Source, plan rewrite.ManifestPlan, config []byte, rules ruleset.Set,
	layers map[digest.Digest]rewrite.LayerResult, comps map[digest.Digest]rewrite.Compression, untouched *untouchedLayers) (map[digest.Digest]digest.Digest, error) {
	check := rewrite.CheckDiffIDs(plan, config)
	if !check.Applies {
		return nil, nil
	}
	// A layer another rule left untouched in this computation is not read
	// again: a read that failed (not a tar, too large, a zstd window past
	// the bound) would fail the same way. One whose read went well, left
	// for what a rule would have made of it (it amplifies, say), has its
	// diff ID in its verdict, and keeps it.
	unread := func(dgst digest.Digest) bool { return untouched.has(dgst) && !e.knowsDiffID(ctx, dgst) }
	want := slices.DeleteFunc(slices.Clone(check.Suspect), unread)
	for _, desc := range plan.Layers {
		readAnyway := ((rules.SymlinkXattrs || rules.GNUSparse) && rewrite.IsScannableLayer(desc.MediaType)) ||
			(rules.LayerMediaType && desc.MediaType == ocispec.MediaTypeImageLayer) ||
			(rules.ZstdGzip && isZstdLayer(desc.MediaType))
		if readAnyway && !unread(desc.Digest) && !slices.Contains(want, desc.Digest) {
			want = append(want, desc.Digest)
		}
	}
	out := map[digest.Digest]digest.Digest{}
	var read []digest.Digest
	for _, dgst := range want {
		if l, ok := layers[dgst]; ok && !l.Transform.Rewrites() && l.DiffID != "" {
			out[dgst] = l.DiffID // recompressed byte for byte: the same tar
			continue
		}
		read = append(read, dgst)
	}
	var mu sync.Mutex
	err := fewAtATime(ctx, layerFetches, read, func(ctx context.Context, dgst digest.Digest) error {
		id, comp, err := e.layerDiffID(ctx, src, dgst)
		if reason := skipReason(err); reason != "" {
			e.m.LayersSkipped.WithLabelValues(reason).Inc()
			e.log.Warn("layer left untouched", "repo", src.Repository(), "digest", dgst, "reason", reason, "error", err)
			untouched.add(dgst, reason, e.limitOf(reason))
			return nil
		}
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		out[dgst] = id
		if comp != "" && comps[dgst] == "" {
			comps[dgst] = comp
		}
		return nil
	})
	return out, err
}

// knowsDiffID reports whether layer dgst's verdict records its diff ID.
func (e *Engine) knowsDiffID(ctx context.Context, dgst digest.Digest) bool {
	v, err := e.opts.Store.GetLayerVerdict(ctx, dgst)
	return err == nil && v.OriginalDiffID != ""
}

// layerDiffID is the diff ID of layer dgst: from its verdict when a scan
// recorded it, else read whole from the cache, verified (readLayer), and
// then recorded in the verdict when there is one, so that the layer is
// read for it once. comp is the blob's compression when it was read.
func (e *Engine) layerDiffID(ctx context.Context, src Source, dgst digest.Digest) (id digest.Digest, comp rewrite.Compression, err error) {
	v, verr := e.layerRecord(ctx, src, dgst)
	switch {
	case verr == nil && v.OriginalDiffID != "":
		return v.OriginalDiffID, "", nil
	case verr != nil && !errors.Is(verr, cache.ErrNotFound):
		return "", "", verr
	}
	_, err = e.readLayer(ctx, src, dgst, func(r io.Reader) (err error) {
		id, comp, err = rewrite.LayerDiffID(r, e.limits())
		return err
	})
	if err != nil {
		return "", "", fmt.Errorf("diff ID of layer %s: %w", dgst, err)
	}
	if verr == nil && v.Skipped == "" {
		// A verdict from before scans recorded diff IDs.
		v.OriginalDiffID = id
		if err := e.opts.Store.PutLayerVerdict(ctx, v); err != nil {
			e.log.Error("recording a layer's diff ID failed", "digest", dgst, "error", err)
		}
	}
	return id, comp, nil
}
