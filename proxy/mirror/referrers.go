package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// referrerReads is how many of a list's manifests are read at once to
// check them (verifyReferrers): each is at most a manifest's size in
// memory, and a request upstream when it is not cached.
const referrerReads = 4

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
// and served stale when the upstream cannot answer. Every descriptor in it
// was checked against its manifest (verifyReferrers).
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
	if d, made, err := r.derivedRecord(ctx, object{dgst: subject}); err != nil {
		return ReferrersList{}, storageFailed(err)
	} else if made {
		_, held, err := r.heldOrigin(ctx, d)
		if err != nil {
			return ReferrersList{}, storageFailed(err)
		}
		if held {
			// A variant regnorm made here (or its attestation): the
			// upstream knows nothing of it, and its referrers are
			// regnorm's own, its derivation attestation (attest.go).
			return r.madeReferrers(ctx, subject)
		}
		// Admitted where regnorm did not make it: the upstream holds the
		// same bytes here (see ask), and their referrers are its own.
	}
	rec, err := s.store.GetReferrers(ctx, remote.Upstream(), remote.Name(), subject)
	// A record of an upstream's unchecked claim is none.
	haveRec := err == nil && rec.Verified
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
		if got.Granted {
			// Only a 200 says the client's credentials may read the
			// repository: two 404s (no API, no tag) are also what a
			// registry answers a client who may not.
			remote.Confirm(s.clock.Now())
		}
		var known *cache.ReferrersRecord
		if haveRec {
			known = &rec
		}
		kept, refused, err := r.verifyReferrers(ctx, subject, got.Manifests, known)
		if err != nil {
			return nil, err
		}
		fresh := cache.ReferrersRecord{Subject: subject, Manifests: kept, Refused: refused, Verified: true, FromTag: got.FromTag, CheckedAt: s.clock.Now()}
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

// verifyReferrers checks an upstream's list of subject's referrers against
// the manifests it names: the spec's list names the manifests of the
// repository "with a subject field that specifies the value of <digest>",
// with their own artifact type and annotations, and an upstream's list (or
// a tag schema index, which anyone who may push writes) is only a claim.
// Each listed manifest is read through this Repository, as the client's
// manifest read (admitted, from the cache or the upstream, its digest
// checked), and kept, in the list's order, only when it is an OCI manifest
// or index whose subject is subject; its descriptor is taken from it, not
// from the list. The others are refused.
//
// What known (the last record) verified or refused is not read again:
// manifests are content-addressed, so a verdict holds. The rest costs a
// manifest read each, referrerReads at once, within the refresh's time;
// the list is at most mediatype.MaxReferrers long, and its kept
// descriptors together at most mediatype.MaxManifestSize encoded, as the
// upstream's list was. A listed manifest the repository does not have
// (404) is refused; any other failure fails the list, which is not
// recorded.
func (r *Repository) verifyReferrers(ctx context.Context, subject digest.Digest, claimed []ocispec.Descriptor, known *cache.ReferrersRecord) (kept []ocispec.Descriptor, refused []digest.Digest, err error) {
	verified, wasRefused := map[digest.Digest]ocispec.Descriptor{}, map[digest.Digest]bool{}
	if known != nil {
		for _, d := range known.Manifests {
			verified[d.Digest] = d
		}
		for _, d := range known.Refused {
			wasRefused[d] = true
		}
	}
	type verdict struct {
		desc ocispec.Descriptor
		ok   bool
	}
	verdicts := make([]verdict, len(claimed))
	var size atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(referrerReads)
	for i, c := range claimed {
		if wasRefused[c.Digest] {
			continue
		}
		if d, ok := verified[c.Digest]; ok {
			verdicts[i] = verdict{d, true}
			if err := addReferrerSize(&size, d); err != nil {
				return nil, nil, r.tooLargeReferrers(subject)
			}
			continue
		}
		g.Go(func() error {
			d, ok, err := r.referrer(gctx, subject, c.Digest)
			if err != nil || !ok {
				return err
			}
			if err := addReferrerSize(&size, d); err != nil {
				return r.tooLargeReferrers(subject)
			}
			verdicts[i] = verdict{d, true}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	for i, v := range verdicts {
		if v.ok {
			kept = append(kept, v.desc)
		} else {
			refused = append(refused, claimed[i].Digest)
		}
	}
	return kept, refused, nil
}

// addReferrerSize adds d's encoded size to size, and fails past
// mediatype.MaxManifestSize.
func addReferrerSize(size *atomic.Int64, d ocispec.Descriptor) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if size.Add(int64(len(b))) > mediatype.MaxManifestSize {
		return errors.New("too large")
	}
	return nil
}

func (r *Repository) tooLargeReferrers(subject digest.Digest) error {
	return errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
		fmt.Sprintf("the referrers of %s in upstream %s, as their manifests describe them, are larger than %d bytes", subject, r.remote.Upstream(), mediatype.MaxManifestSize), nil)
}

// referrer is the descriptor of the manifest dgst as a referrers list
// names it (the spec: its media type, digest, size, artifact type and
// annotations), ok when it is an OCI manifest or index in this repository
// whose subject is subject.
func (r *Repository) referrer(ctx context.Context, subject, dgst digest.Digest) (desc ocispec.Descriptor, ok bool, err error) {
	m, err := r.Manifest(ctx, dgst.String(), []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex})
	var e *errcode.Error
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
		return ocispec.Descriptor{}, false, nil
	case err != nil:
		return ocispec.Descriptor{}, false, err
	case m.MediaType != ocispec.MediaTypeImageManifest && m.MediaType != ocispec.MediaTypeImageIndex:
		return ocispec.Descriptor{}, false, nil
	}
	var doc struct {
		ArtifactType string `json:"artifactType"`
		Config       *struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Subject     *ocispec.Descriptor `json:"subject"`
		Annotations map[string]string   `json:"annotations"`
	}
	if err := json.Unmarshal(m.Content, &doc); err != nil || doc.Subject == nil || doc.Subject.Digest != subject {
		return ocispec.Descriptor{}, false, nil
	}
	artifactType := doc.ArtifactType
	if artifactType == "" && m.MediaType == ocispec.MediaTypeImageManifest && doc.Config != nil {
		// The spec: an image manifest without one is of its config's type.
		artifactType = doc.Config.MediaType
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Content)),
		ArtifactType: artifactType, Annotations: doc.Annotations}, true, nil
}
