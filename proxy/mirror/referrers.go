package mirror

import (
	"context"
	"errors"
	"net/http"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// ReferrersList is a subject's referrers as a Repository answers them.
type ReferrersList struct {
	// Manifests are the referrers' descriptors, filtered when the caller
	// asked for an artifact type; never nil.
	Manifests []ocispec.Descriptor
	// Filtered says an artifactType filter was applied (by regnorm, always:
	// the upstream is asked for the whole list, which is what is cached).
	Filtered bool
	// Source is where the list came from: "cache" or "upstream".
	Source string
	// Stale is set when the record was served past its time because the
	// upstream could not answer.
	Stale bool
}

// Referrers is the list of manifests that name subject as their subject
// in the repository (the OCI distribution spec's referrers API), with only
// those of artifactType when it is not empty.
//
// It is admitted like the manifest subject itself (access.go): a client
// learns the referrers of a subject only in a repository where it may read
// that subject, and with forwarded credentials only once the upstream said
// yes to its own. The list is the repository's own record, like a tag's
// (cache.ReferrersRecord): revalidated once it is older than the tag TTL,
// and served stale when the upstream cannot answer.
func (r *Repository) Referrers(ctx context.Context, subject digest.Digest, artifactType string) (ReferrersList, error) {
	if err := r.admit(ctx, object{dgst: subject}); err != nil {
		return ReferrersList{}, err
	}
	list, err := r.referrers(ctx, subject)
	if err != nil {
		return ReferrersList{}, err
	}
	if artifactType != "" {
		list.Filtered = true
		var kept []ocispec.Descriptor
		for _, d := range list.Manifests {
			if d.ArtifactType == artifactType {
				kept = append(kept, d)
			}
		}
		list.Manifests = kept
	}
	if list.Manifests == nil {
		list.Manifests = []ocispec.Descriptor{}
	}
	return list, nil
}

// referrers is subject's whole list, from a fresh record, else from the
// upstream as the client, else from a stale record when the upstream
// cannot answer.
func (r *Repository) referrers(ctx context.Context, subject digest.Digest) (ReferrersList, error) {
	s, remote := r.s, r.remote
	if _, made, err := r.derivedRecord(ctx, object{dgst: subject}); err != nil {
		return ReferrersList{}, errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	} else if made {
		// A variant regnorm made: the upstream knows nothing of it, and its
		// referrers are regnorm's own. Part 2 of issue 25 fills this list
		// with the variant's derivation attestation; until then it is empty.
		return ReferrersList{Source: "cache"}, nil
	}
	rec, err := s.store.GetReferrers(ctx, remote.Upstream(), remote.Name(), subject)
	haveRec := err == nil
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		s.log.Warn("cache read failed, trying upstream", "digest", subject, "error", err)
	}
	if haveRec && s.clock.Now().Sub(rec.CheckedAt) < s.tagTTL {
		s.metrics.CacheRequests.WithLabelValues("referrers", "hit").Inc()
		return ReferrersList{Manifests: rec.Manifests, Source: "cache"}, nil
	}
	s.metrics.CacheRequests.WithLabelValues("referrers", "miss").Inc()
	// One refresh per client identity, as for a tag: with forwarded
	// credentials the upstream's answer is for these.
	key := "referrers " + remote.Identity() + " " + subject.String()
	v, err := s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		got, err := remote.Referrers(ctx, subject)
		if err != nil {
			return nil, err
		}
		remote.Confirm(s.clock.Now())
		fresh := cache.ReferrersRecord{Subject: subject, Manifests: got.Manifests, FromTag: got.FromTag, CheckedAt: s.clock.Now()}
		if err := s.store.PutReferrers(ctx, remote.Upstream(), remote.Name(), fresh); err != nil {
			s.log.Error("caching referrers failed", "repo", remote.Name(), "digest", subject, "error", err)
		}
		return fresh, nil
	})
	switch {
	case err != nil && haveRec && upstream.Unavailable(err):
		s.metrics.StaleServes.WithLabelValues(remote.Upstream()).Inc()
		s.log.Warn("upstream unavailable, serving stale referrers", "upstream", remote.Upstream(), "repo", remote.Name(),
			"digest", subject, "checked_at", rec.CheckedAt, "error", err)
		return ReferrersList{Manifests: rec.Manifests, Source: "cache", Stale: true}, nil
	case err != nil:
		return ReferrersList{}, err
	}
	return ReferrersList{Manifests: v.(cache.ReferrersRecord).Manifests, Source: "upstream"}, nil
}
