package normalize

import (
	"context"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/rewrite"
)

// convertSchema1 converts a schema 1 manifest to Docker schema 2: it reads
// every layer that is not a throwaway (a few at a time, verified as they
// are read) for its size and diff ID, and stores the new config, made from
// the manifest, as a blob derived from it.
func (e *Engine) convertSchema1(ctx context.Context, src Source, m cache.Manifest, untouched *untouchedLayers) (rewrite.Result, error) {
	layers, err := rewrite.PlanSchema1(m.Content)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	var read []digest.Digest
	blobs := map[digest.Digest]rewrite.Schema1Blob{}
	for _, l := range layers {
		if _, seen := blobs[l.Digest]; !l.Throwaway && !seen {
			blobs[l.Digest] = rewrite.Schema1Blob{}
			read = append(read, l.Digest)
		}
	}
	var mu sync.Mutex
	err = fewAtATime(ctx, layerFetches, read, func(ctx context.Context, dgst digest.Digest) error {
		b, err := e.schema1Blob(ctx, src, dgst)
		if reason := skipReason(err); reason != "" {
			// The image is served as it is: so it is judged again under
			// larger limits.
			untouched.add(dgst, reason, e.limitOf(reason))
		}
		if err != nil {
			return err
		}
		mu.Lock()
		blobs[dgst] = b
		mu.Unlock()
		return nil
	})
	if err != nil {
		return rewrite.Result{}, err
	}
	res, err := rewrite.ConvertSchema1(m.MediaType, m.Content, blobs)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	if err := e.putConfig(ctx, res.Config, res.ConfigDesc.Digest, m.Digest, true); err != nil {
		return rewrite.Result{}, fmt.Errorf("store converted config: %w", err)
	}
	src.Learn(ctx, res.ConfigDesc.Digest, m.Digest)
	return res, nil
}

// schema1Blob reads one layer whole, verified, for what conversion needs.
// A layer that is not a tar regnorm reads, or is beyond its limits, makes
// the image one regnorm cannot convert.
func (e *Engine) schema1Blob(ctx context.Context, src Source, dgst digest.Digest) (rewrite.Schema1Blob, error) {
	var b rewrite.Schema1Blob
	n, err := e.readLayer(ctx, src, dgst, func(r io.Reader) (err error) {
		b.DiffID, b.Compression, err = rewrite.LayerDiffID(r, e.limits())
		return err
	})
	if skipReason(err) != "" {
		return b, fmt.Errorf("%w: layer %s: %w", errInvalidContent, dgst, err)
	}
	b.Size = n
	return b, err
}
