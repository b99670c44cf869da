package normalize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/rewrite"
)

// convertSchema1 converts a schema 1 manifest to Docker schema 2: it reads
// every layer that is not a throwaway (a few at a time, verified as they
// are read) for its size and diff ID, and stores the new config, made from
// the manifest, as a blob derived from it.
func (e *Engine) convertSchema1(ctx context.Context, src Source, m cache.Manifest) (rewrite.Result, error) {
	layers, err := rewrite.PlanSchema1(m.Content)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	var mu sync.Mutex
	blobs := map[digest.Digest]rewrite.Schema1Blob{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(layerFetches)
	for _, l := range layers {
		if l.Throwaway {
			continue
		}
		mu.Lock()
		_, seen := blobs[l.Digest]
		blobs[l.Digest] = rewrite.Schema1Blob{}
		mu.Unlock()
		if seen {
			continue
		}
		g.Go(func() error {
			b, err := e.schema1Blob(gctx, src, l.Digest)
			if err != nil {
				return err
			}
			mu.Lock()
			blobs[l.Digest] = b
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
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
// A layer that is not a tar regnorm reads, or expands beyond MaxLayerSize,
// makes the image one regnorm cannot convert.
func (e *Engine) schema1Blob(ctx context.Context, src Source, dgst digest.Digest) (rewrite.Schema1Blob, error) {
	b, err := e.schema1BlobOnce(ctx, src, dgst)
	if damaged(err) {
		// The cached copy failed verification and is gone: fetch it again.
		e.log.Warn("cached layer failed verification; fetching it again", "repo", src.Repository(), "digest", dgst, "error", err)
		b, err = e.schema1BlobOnce(ctx, src, dgst)
	}
	if errors.Is(err, rewrite.ErrNotTar) || errors.Is(err, rewrite.ErrLayerTooLarge) {
		return b, fmt.Errorf("%w: layer %s: %w", errInvalidContent, dgst, err)
	}
	return b, err
}

func (e *Engine) schema1BlobOnce(ctx context.Context, src Source, dgst digest.Digest) (rewrite.Schema1Blob, error) {
	rc, err := openVerified(ctx, src, dgst)
	if err != nil {
		return rewrite.Schema1Blob{}, err
	}
	defer rc.Close()
	counted := &countingReader{r: rc}
	diffID, comp, err := rewrite.LayerDiffID(counted, e.opts.MaxLayerSize)
	if _, rerr := io.Copy(io.Discard, counted); rerr != nil {
		return rewrite.Schema1Blob{}, fmt.Errorf("read layer %s: %w", dgst, rerr)
	}
	if err != nil {
		return rewrite.Schema1Blob{}, err
	}
	e.m.LayersScanned.Inc()
	e.m.BytesScanned.Add(float64(counted.n))
	return rewrite.Schema1Blob{Size: counted.n, DiffID: diffID, Compression: comp}, nil
}
