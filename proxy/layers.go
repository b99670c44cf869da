package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/rewrite"
)

// layerFetches is how many layers of one image are fetched and scanned at once.
const layerFetches = 3

// repackagedLayers returns the repackaged form of every layer of plan that
// the symlink xattr rule changes, fetching and scanning layers a few at a
// time. Verdicts come from the cache when another pull, replica or earlier
// process already scanned the layer.
func (s *Server) repackagedLayers(ctx context.Context, up *upstream, repo string, layers []ocispec.Descriptor) (map[digest.Digest]rewrite.LayerResult, error) {
	var mu sync.Mutex
	fixes := map[digest.Digest]rewrite.LayerResult{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(layerFetches)
	for _, desc := range layers {
		if !rewrite.IsScannableLayer(desc.MediaType) {
			continue
		}
		g.Go(func() error {
			v, err := s.layerVerdict(gctx, up, repo, desc.Digest)
			if err != nil {
				return err
			}
			if v.Repacked != "" {
				mu.Lock()
				fixes[desc.Digest] = layerResult(v)
				mu.Unlock()
			}
			return nil
		})
	}
	return fixes, g.Wait()
}

// layerVerdict scans one layer once, however many images and requests want it.
func (s *Server) layerVerdict(ctx context.Context, up *upstream, repo string, dgst digest.Digest) (cache.LayerVerdict, error) {
	if v, err := s.store.GetLayerVerdict(ctx, dgst); err == nil {
		return v, nil
	}
	// One scan per layer and identity: the scan asks upstream as its
	// caller, whose refusal must not become another client's answer.
	v, err, _ := s.layers.Do(dgst.String()+" "+askingAs(up, repo), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.fetches.timeout)
		defer cancel()
		return s.computeLayerVerdict(ctx, up, repo, dgst)
	})
	if err != nil {
		return cache.LayerVerdict{}, err
	}
	return v.(cache.LayerVerdict), nil
}

func (s *Server) computeLayerVerdict(ctx context.Context, up *upstream, repo string, dgst digest.Digest) (cache.LayerVerdict, error) {
	v := cache.LayerVerdict{Original: dgst, CreatedAt: s.clock.Now().UTC()}
	scan, err := s.scanLayer(ctx, up, repo, dgst)
	if damaged(err) {
		// The cached copy failed verification and is gone: fetch it again.
		s.log.Warn("cached layer failed verification; fetching it again", "repo", repo, "digest", dgst, "error", err)
		scan, err = s.scanLayer(ctx, up, repo, dgst)
	}
	switch {
	case errors.Is(err, rewrite.ErrNotTar), errors.Is(err, rewrite.ErrLayerTooLarge):
		// Not a tar regnorm reads, or a decompression bomb: served as it is,
		// and never scanned again.
		reason := "not-tar"
		if errors.Is(err, rewrite.ErrLayerTooLarge) {
			reason = "too-large"
		}
		s.metrics.layersSkipped.WithLabelValues(reason).Inc()
		s.log.Warn("layer left untouched", "repo", repo, "digest", dgst, "reason", reason, "error", err)
		return v, s.store.PutLayerVerdict(ctx, v)
	case err != nil:
		return cache.LayerVerdict{}, err
	}
	v.Compression, v.Entries = string(scan.Compression), scan.Entries
	if !scan.Clean() {
		res, err := s.repackFromOriginal(ctx, up, repo, dgst, "")
		if err != nil {
			return cache.LayerVerdict{}, err
		}
		if err := s.store.PutDerived(ctx, cache.Derived{Digest: res.Digest, Kind: cache.DerivedLayer, Source: dgst}); err != nil {
			return cache.LayerVerdict{}, fmt.Errorf("record repackaged layer: %w", err)
		}
		v.Repacked, v.Size, v.DiffID = res.Digest, res.Size, res.DiffID
		for _, r := range res.Removals {
			v.Removals = append(v.Removals, cache.XattrRemoval(r))
		}
		s.log.Info("repackaged layer", "repo", repo, "original", dgst, "repacked", res.Digest, "entries_stripped", res.Stripped)
	}
	if err := s.store.PutLayerVerdict(ctx, v); err != nil {
		return cache.LayerVerdict{}, fmt.Errorf("record layer verdict: %w", err)
	}
	return v, nil
}

// scanLayer reads a layer as it arrives: from the download's spool while it
// downloads (the single-flight fetch clients use), or from the cache, hashed
// as it is read. Whatever the scan concludes counts only once the whole blob
// has verified: the rest of it is read too, and a short or wrong blob is an
// error, never a verdict.
func (s *Server) scanLayer(ctx context.Context, up *upstream, repo string, dgst digest.Digest) (rewrite.LayerScan, error) {
	b, err := s.openBlob(ctx, distRequest{upstream: up, repo: repo, digest: dgst, blob: true}, 0, true)
	if err != nil {
		return rewrite.LayerScan{}, err
	}
	defer b.Close()
	counted := &countingReader{r: b}
	scan, err := rewrite.ScanLayer(counted, s.maxLayerSize)
	if _, rerr := io.Copy(io.Discard, counted); rerr != nil {
		return rewrite.LayerScan{}, fmt.Errorf("read layer %s: %w", dgst, rerr)
	}
	s.metrics.layersScanned.Inc()
	s.metrics.bytesScanned.Add(float64(counted.n))
	return scan, err
}

// repackLayer writes the repackaged layer into the cache as a new blob,
// from the cached original, verified as it is read. want, when set, is the
// digest the result must have (a rebuild).
func (s *Server) repackLayer(ctx context.Context, dgst, want digest.Digest) (rewrite.LayerResult, error) {
	rc, _, err := s.store.OpenVerified(ctx, dgst)
	if err != nil {
		return rewrite.LayerResult{}, err
	}
	defer rc.Close()
	var in *cache.Ingest
	if want != "" {
		in, err = s.store.IngestBlob(ctx, want, -1)
	} else {
		in, err = s.store.NewBlob(ctx)
	}
	if err != nil {
		return rewrite.LayerResult{}, err
	}
	res, err := rewrite.RepackLayer(in, rc, s.maxLayerSize)
	if err != nil {
		// The layer may have stopped the read early (at a bad header, say):
		// read the rest, so that a damaged original says so and is fetched
		// again, rather than failing every rebuild for good.
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
	s.metrics.layersRepackaged.Inc()
	s.metrics.bytesRepackaged.Add(float64(res.Size))
	s.noteIngest(res.Size)
	return res, nil
}

// repackFromOriginal repackages the cached layer dgst. If the cached copy
// fails verification (it is then removed), the layer is fetched again from
// upstream/repo and repackaged from that.
func (s *Server) repackFromOriginal(ctx context.Context, up *upstream, repo string, dgst, want digest.Digest) (rewrite.LayerResult, error) {
	res, err := s.repackLayer(ctx, dgst, want)
	if !damaged(err) {
		return res, err
	}
	s.log.Warn("cached layer failed verification; fetching it again", "repo", repo, "digest", dgst, "error", err)
	if err := s.fetches.ensure(ctx, up, repo, dgst); err != nil {
		return rewrite.LayerResult{}, err
	}
	return s.repackLayer(ctx, dgst, want)
}

// damaged reports whether err is a cached blob that failed verification
// as it was read. OpenVerified has removed it, so the next read fetches it.
func damaged(err error) bool { return errors.Is(err, cache.ErrDamaged) }

// rebuildLayer makes an evicted repackaged layer again from its original,
// fetched again if it was evicted too, as req's client (whose repository
// holds the original: it was admitted). Repackaging is deterministic, and
// the ingest verifies the result against the digest clients ask for.
func (s *Server) rebuildLayer(ctx context.Context, req distRequest, d cache.Derived) error {
	src := req
	src.digest = d.Source
	if err := s.admit(ctx, src); err != nil {
		return err
	}
	_, err, _ := s.layers.Do("rebuild "+d.Digest.String()+" "+askingAs(src.upstream, src.repo), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.fetches.timeout)
		defer cancel()
		if _, err := s.store.StatBlob(ctx, d.Digest); err == nil {
			return nil, nil // rebuilt meanwhile
		}
		if err := s.fetches.ensure(ctx, src.upstream, src.repo, d.Source); err != nil {
			return nil, err
		}
		if _, err := s.repackFromOriginal(ctx, src.upstream, src.repo, d.Source, d.Digest); err != nil {
			if errors.Is(err, cache.ErrDigestMismatch) && !damaged(err) {
				s.log.Error("a rebuild made other bytes than the repackaged layer clients ask for: was it made by another regnorm version?",
					"digest", d.Digest, "source", d.Source, "error", err)
			}
			return nil, fmt.Errorf("rebuild repackaged layer %s: %w", d.Digest, err)
		}
		s.metrics.rebuilds.Inc()
		s.log.Info("rebuilt an evicted repackaged layer", "digest", d.Digest, "source", d.Source)
		return nil, nil
	})
	return err
}

// putConfig stores a config rewritten from source. It is retained first,
// so that it is never evictable, not even for a moment: nothing could make
// it again on demand.
func (s *Server) putConfig(ctx context.Context, content []byte, want, source digest.Digest) error {
	if err := s.store.Retain(ctx, want); err != nil {
		return err
	}
	if err := s.store.PutDerived(ctx, cache.Derived{Digest: want, Kind: cache.DerivedConfig, Source: source}); err != nil {
		return err
	}
	in, err := s.store.NewBlob(ctx)
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
	s.noteIngest(in.Size())
	return nil
}

func layerResult(v cache.LayerVerdict) rewrite.LayerResult {
	res := rewrite.LayerResult{Digest: v.Repacked, Size: v.Size, DiffID: v.DiffID}
	res.Compression, res.Entries = rewrite.Compression(v.Compression), v.Entries
	for _, r := range v.Removals {
		res.Removals = append(res.Removals, rewrite.XattrRemoval(r))
	}
	return res
}

// askingAs names who a piece of single-flight work asks upstream as: the
// upstream, the repository, and with forwarded credentials the client's.
func askingAs(up *upstream, repo string) string {
	return fmt.Sprintf("%s/%s %x", up.name, repo, up.credsKey)
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
