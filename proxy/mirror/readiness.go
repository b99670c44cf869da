package mirror

import (
	"context"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// Readiness states: what a containerd version would make of an original
// without regnorm, and whether regnorm has its variant.
const (
	// Ready: the rules change the original, and the variant is cached.
	Ready = "ready"
	// NotReady: the rules change the original, and the variant is not
	// cached (evicted since): the first pull makes it again.
	NotReady = "not-ready"
	// Unknown: the rules may change the original and no verdict is
	// recorded yet (or the original itself is no longer cached).
	Unknown = "unknown"
	// Clean: the rules leave the original as it is.
	Clean = "clean"
)

// Readiness is what is known of one original under one rule set.
type Readiness struct {
	State string
	// Rules are the rules that may change the original
	// (normalize.Applicable); empty when it is not cached.
	Rules ruleset.Set
	// Variant is the variant's digest, when the rules change the original.
	Variant digest.Digest
	// Cached is false when the original is not in the cache.
	Cached bool
}

// Readiness says what rules make of the original upstream/repo@dgst, as far
// as the cache records it: it reads the original, its recorded verdict and
// the variant's manifest, never an upstream, and computes nothing. It is
// the operator's view of the cache, as the rewrite report is, not a read
// of a client: who may see it is decided by who may read the report.
func (s *Service) Readiness(ctx context.Context, upstream, repo string, dgst digest.Digest, rules ruleset.Set) (Readiness, error) {
	m, err := s.store.GetManifest(ctx, upstream, repo, dgst)
	if errors.Is(err, cache.ErrNotFound) {
		return Readiness{State: Unknown}, nil
	}
	if err != nil {
		return Readiness{}, err
	}
	res := Readiness{State: Clean, Rules: normalize.Applicable(m, rules), Cached: true}
	if !normalize.MayNeed(m, rules) {
		return res, nil
	}
	n, ok := s.engine.Verdict(ctx, m, rules)
	if !ok {
		res.State = Unknown
		return res, nil
	}
	if n.Normalized == "" {
		return res, nil
	}
	res.Variant = n.Normalized
	cached, err := s.ManifestCached(ctx, upstream, repo, n.Normalized)
	if err != nil {
		return Readiness{}, fmt.Errorf("readiness of %s/%s@%s: %w", upstream, repo, dgst, err)
	}
	res.State = NotReady
	if cached {
		res.State = Ready
	}
	return res, nil
}

// ManifestCached reports whether upstream/repo@dgst is in the cache (and
// reads whole and verified): a variant that is, is served at once.
func (s *Service) ManifestCached(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
	_, err := s.store.GetManifest(ctx, upstream, repo, dgst)
	if errors.Is(err, cache.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
