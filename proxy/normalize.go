package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

const (
	// maxConfigSize caps a config blob read into memory for normalization.
	maxConfigSize = 8 << 20
	// maxIndexDepth: an index may list indexes; deeper nesting is served as is.
	maxIndexDepth = 2
	// childFetches is how many children of an index are fetched at once.
	childFetches = 4
)

// errInvalidContent marks content the rules refuse (invalid, ambiguous,
// oversized): such a document is served untouched. Every other error (an
// upstream that cannot deliver a config, say) fails the request instead.
var errInvalidContent = errors.New("content not normalizable")

// normalized is what to serve for one original manifest, and why.
type normalized struct {
	manifest cache.Manifest
	verdict  cache.Normalization // Normalized is empty when nothing changed
}

func (n normalized) changed() bool { return n.verdict.Normalized != "" }

// normalize returns the manifest to serve in place of m to a client with
// rule set rules: m's variant for that set, or m itself. Verdicts are read
// from the cache first, so a restart or another replica does not recompute
// them.
func (s *Server) normalize(ctx context.Context, up *upstream, repo string, m cache.Manifest, rules ruleset.Set) (normalized, error) {
	return s.normalizeDepth(ctx, up, repo, m, rules, 0)
}

func (s *Server) normalizeDepth(ctx context.Context, up *upstream, repo string, m cache.Manifest, rules ruleset.Set, depth int) (normalized, error) {
	clean := normalized{manifest: m, verdict: cache.Normalization{Original: m.Digest, MediaType: m.MediaType, Rules: rules.Key()}}
	if !mayNeedNormalizing(m, rules, depth) {
		return clean, nil
	}
	if n, err := s.store.GetNormalization(ctx, m.Digest, rules.Key()); err == nil {
		if n.Normalized == "" {
			return normalized{manifest: m, verdict: n}, nil
		}
		if nm, err := s.store.GetManifest(ctx, n.Normalized); err == nil {
			return normalized{manifest: nm, verdict: n}, nil
		}
		// The verdict outlived its manifest: compute both again.
	}
	// Per identity: the work asks upstream as its caller (see askingAs).
	v, err, _ := s.normalizations.Do(m.Digest.String()+" "+rules.Key()+" "+askingAs(up, repo), func() (any, error) {
		// Bounded like the downloads it waits for: clients are answered by
		// their own deadline (503 and Retry-After), not by this one.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.fetches.timeout)
		defer cancel()
		return s.computeNormalization(ctx, up, repo, m, rules, depth)
	})
	if err != nil {
		s.metrics.rewriteErrors.WithLabelValues("fetch").Inc()
		s.metrics.normalizations.WithLabelValues("error").Inc()
		return normalized{}, err
	}
	return v.(normalized), nil
}

// mayNeedNormalizing is the pure, I/O-free first look: for a client with no
// rule, nothing does; with only the config media type rule, most manifests
// are clean and cost nothing more; with the layer rule, every image with
// layers needs its verdict.
func mayNeedNormalizing(m cache.Manifest, rules ruleset.Set, depth int) bool {
	switch {
	case rules.Empty():
		return false
	case rewrite.IsManifest(m.MediaType):
		plan, err := rewrite.PlanManifest(m.MediaType, m.Content)
		if err != nil {
			return false
		}
		if rules.ConfigMediaType && plan.ConfigMediaTypeSuspect {
			return true
		}
		if rules.SymlinkXattrs {
			for _, l := range plan.Layers {
				if rewrite.IsScannableLayer(l.MediaType) {
					return true
				}
			}
		}
		return false
	case rewrite.IsIndex(m.MediaType):
		return depth < maxIndexDepth
	}
	return false
}

func (s *Server) computeNormalization(ctx context.Context, up *upstream, repo string, m cache.Manifest, rules ruleset.Set, depth int) (normalized, error) {
	start := time.Now()
	var res rewrite.Result
	var err error
	if rewrite.IsManifest(m.MediaType) {
		res, err = s.normalizeImage(ctx, up, repo, m, rules)
	} else {
		res, err = s.normalizeIndex(ctx, up, repo, m, rules, depth)
	}
	verdict := cache.Normalization{Original: m.Digest, MediaType: m.MediaType, Rules: rules.Key(), CreatedAt: s.clock.Now().UTC()}
	out := m
	result := "clean"
	switch {
	case errors.Is(err, errInvalidContent):
		result = "invalid"
		// Content-addressed: the same bytes will be refused again, so the
		// clean verdict is recorded and the original served.
		s.metrics.rewriteErrors.WithLabelValues("invalid").Inc()
		s.log.Warn("manifest not normalizable, serving it untouched", "upstream", up.name, "repo", repo, "digest", m.Digest, "error", err)
	case err != nil:
		return normalized{}, err
	case res.Changed():
		result = "normalized"
		out = cache.Manifest{MediaType: res.MediaType, Digest: res.Digest, Content: res.Content}
		// The record first: the new manifest belongs wherever its original
		// does, and only there.
		if err := s.store.PutDerived(ctx, cache.Derived{Digest: res.Digest, Kind: cache.DerivedManifest, Source: m.Digest}); err != nil {
			return normalized{}, fmt.Errorf("record normalized manifest: %w", err)
		}
		if err := s.store.PutManifest(ctx, out); err != nil {
			return normalized{}, fmt.Errorf("cache normalized manifest: %w", err)
		}
		s.learnDerived(ctx, up.name, repo, res.Digest, m.Digest)
		verdict.Normalized = res.Digest
		for _, c := range res.Changes {
			verdict.Changes = append(verdict.Changes, cache.Change{Kind: c.Kind, Path: c.Path, Old: c.Old, New: c.New, Details: c.Details})
			s.metrics.rewrites.WithLabelValues(c.Kind).Inc()
		}
		s.reports.add(cache.ReportEntry{Upstream: up.name, Repository: repo, Original: m.Digest, Rules: verdict.Rules,
			Normalized: res.Digest, MediaType: res.MediaType, Changes: verdict.Changes})
		s.log.Info("normalized manifest", "upstream", up.name, "repo", repo, "original", m.Digest, "rules", verdict.Rules,
			"normalized", res.Digest, "changes", len(res.Changes))
		// Normalizing a normalized manifest changes nothing: say so now, so a
		// pull by the new digest costs no work.
		if err := s.store.PutNormalization(ctx, cache.Normalization{Original: res.Digest, MediaType: res.MediaType,
			Rules: verdict.Rules, CreatedAt: verdict.CreatedAt}); err != nil {
			s.log.Error("caching normalization verdict failed", "digest", res.Digest, "error", err)
		}
	}
	if err := s.store.PutNormalization(ctx, verdict); err != nil {
		s.log.Error("caching normalization verdict failed", "digest", m.Digest, "error", err)
	}
	s.metrics.normalizeDuration.Observe(time.Since(start).Seconds())
	s.metrics.normalizations.WithLabelValues(result).Inc()
	return normalized{manifest: out, verdict: verdict}, nil
}

// normalizeImage applies the manifest rules of rules: it scans the layers
// (and repackages those that need it) only for the layer rule, and reads the
// config through the cache (where containerd will find it next) only when a
// rule needs it.
func (s *Server) normalizeImage(ctx context.Context, up *upstream, repo string, m cache.Manifest, rules ruleset.Set) (rewrite.Result, error) {
	plan, err := rewrite.PlanManifest(m.MediaType, m.Content)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	if plan.Config.Size > maxConfigSize {
		// Refused before any layer is fetched for nothing.
		return rewrite.Result{}, fmt.Errorf("%w: config is %d bytes, more than %d", errInvalidContent, plan.Config.Size, maxConfigSize)
	}
	var layers map[digest.Digest]rewrite.LayerResult
	if rules.SymlinkXattrs {
		if layers, err = s.repackagedLayers(ctx, up, repo, plan.Layers); err != nil {
			return rewrite.Result{}, err
		}
	}
	var config []byte
	if (rules.ConfigMediaType && plan.ConfigMediaTypeSuspect) || len(layers) > 0 {
		if config, err = s.readBlob(ctx, up, repo, plan.Config, maxConfigSize); err != nil {
			return rewrite.Result{}, err
		}
	}
	res, err := rewrite.NormalizeManifest(rewrite.ManifestInput{MediaType: m.MediaType, Manifest: m.Content, Config: config,
		Layers: layers, KeepConfigMediaType: !rules.ConfigMediaType})
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	if res.Config != nil {
		if err := s.putConfig(ctx, res.Config, res.ConfigDesc.Digest, plan.Config.Digest); err != nil {
			return rewrite.Result{}, fmt.Errorf("store new config: %w", err)
		}
		s.learnDerived(ctx, up.name, repo, res.ConfigDesc.Digest, plan.Config.Digest)
	}
	for original, l := range layers {
		s.learnDerived(ctx, up.name, repo, l.Digest, original)
	}
	return res, nil
}

// normalizeIndex normalizes the children of the configured platforms (a
// few at a time) and points the index at those that changed. The others
// are not read: each read is an upstream pull.
func (s *Server) normalizeIndex(ctx context.Context, up *upstream, repo string, m cache.Manifest, rules ruleset.Set, depth int) (rewrite.Result, error) {
	children, err := rewrite.IndexChildren(m.MediaType, m.Content)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	var mu sync.Mutex
	changed := map[digest.Digest]ocispec.Descriptor{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(childFetches)
	for _, child := range children {
		if !rewrite.IsManifest(child.MediaType) && !rewrite.IsIndex(child.MediaType) || !s.platforms.reads(child) {
			continue
		}
		g.Go(func() error {
			cm, _, err := s.manifestByDigest(gctx, distRequest{upstream: up, repo: repo, digest: child.Digest}, nil)
			if err != nil {
				return fmt.Errorf("child manifest %s: %w", child.Digest, err)
			}
			n, err := s.normalizeDepth(gctx, up, repo, cm, rules, depth+1)
			if err != nil {
				return err
			}
			if n.changed() {
				mu.Lock()
				changed[child.Digest] = ocispec.Descriptor{MediaType: child.MediaType, Digest: n.manifest.Digest, Size: int64(len(n.manifest.Content))}
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rewrite.Result{}, err
	}
	res, err := rewrite.NormalizeIndex(m.MediaType, m.Content, changed)
	if err != nil {
		return rewrite.Result{}, fmt.Errorf("%w: %w", errInvalidContent, err)
	}
	return res, nil
}

// readBlob reads a small blob a rule builds on, through the cache (where
// the client finds it next), verified against its digest as it is read.
func (s *Server) readBlob(ctx context.Context, up *upstream, repo string, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%w: blob %s is %d bytes, more than %d", errInvalidContent, desc.Digest, desc.Size, limit)
	}
	content, err := s.readBlobOnce(ctx, up, repo, desc, limit)
	if damaged(err) {
		// The cached copy failed verification and is gone: fetch it again.
		s.log.Warn("cached blob failed verification; fetching it again", "repo", repo, "digest", desc.Digest, "error", err)
		content, err = s.readBlobOnce(ctx, up, repo, desc, limit)
	}
	return content, err
}

func (s *Server) readBlobOnce(ctx context.Context, up *upstream, repo string, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	b, err := s.openBlob(ctx, distRequest{upstream: up, repo: repo, digest: desc.Digest, blob: true}, 0, true)
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

// noteDigestPull handles a pull by digest: it always gets the bytes it
// names (containerd verifies them). If those are an original that regnorm
// normalizes, the pull cannot be fixed: count it, say which digest to pin
// instead, and put it in the report. Only a verdict already known counts:
// a pull by digest never makes regnorm download what nobody asked for (for
// an index, that would be every platform's layers).
// It reports whether the pull was one of an original that regnorm
// normalizes for this client's rules: a node that needs no rule pulls the
// original by design.
func (s *Server) noteDigestPull(ctx context.Context, req distRequest, m cache.Manifest, client ruleset.Client) bool {
	if !mayNeedNormalizing(m, client.Rules, 0) {
		return false
	}
	n, err := s.store.GetNormalization(ctx, m.Digest, client.Rules.Key())
	if err != nil || n.Normalized == "" {
		return false
	}
	s.metrics.unnormalizedPulls.Inc()
	s.reports.add(cache.ReportEntry{Upstream: req.upstream.name, Repository: req.repo, Original: m.Digest, Rules: n.Rules,
		UnnormalizedPulls: 1, LastUnnormalizedPull: s.clock.Now().UTC()})
	s.log.Warn("pull by an original digest gets the unnormalized image; pin the normalized digest instead",
		"upstream", req.upstream.name, "repo", req.repo, "digest", m.Digest, "normalized", n.Normalized)
	logAttrs(ctx, slog.Bool("unnormalized", true), slog.String("normalized", n.Normalized.String()))
	return true
}

// serveReport answers GET /api/v1/rewrites with every rewrite entry.
func (s *Server) serveReport(w http.ResponseWriter, r *http.Request) error {
	entries, hidden, err := s.visibleReport(r.Context())
	if err != nil {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "reading the rewrite report failed", err)
	}
	if entries == nil {
		entries = []cache.ReportEntry{}
	}
	w.Header().Set("Content-Type", "application/json")
	return writeJSON(w, map[string]any{"rewrites": entries, "hidden": hidden})
}
