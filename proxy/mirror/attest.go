package mirror

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/normalize"
)

// A variant's derivation attestation (proxy/attest, docs/signatures.md) is
// made in each repository that serves the variant, the first time it does:
// its statement names the repository. It is regnorm's own content, like
// the variant, and admitted as the variant is: its manifest, config and
// envelope are recorded as made from the variant's original
// (cache.Derived), so a client reads them exactly where it may read the
// variant. The variant's referrers record in the repository lists it
// (Referrers), and cosign's classic tag sha256-<hex>.att of the variant
// names it (Manifest). Signed, it is also stored as cosign v3 writes one,
// a sigstore bundle of the same envelope in an artifact of its own
// (attest.MakeBundle), which the same record lists: cosign v3 reads that
// one by default, v2 and --new-bundle-format=false the classic one.
//
// Its bytes are a function of the original, the rules, the repository and
// regnorm's version and key (deterministic signatures): replicas make the
// same artifact, and whichever writes first, the others write the same
// bytes again. A record, once written, is not made again (a restart reads
// it back), so an attestation keeps the version that first made it.

// attestTimeout bounds making and storing one attestation (a few small
// writes); the answer of the variant waits for it within its client's
// wait only.
const attestTimeout = 30 * time.Second

// attestationTag is cosign's tag of a digest's classic attestations.
var attestationTag = regexp.MustCompile(`^sha256-([a-f0-9]{64})\.att$`)

// attestFailedFor is how long a variant whose attestation failed is not
// attested again in the repository: a cache that does not answer is not
// asked again by every answer of the variant.
const attestFailedFor = time.Minute

// attestWithin has n's variant of orig attested in the repository, unless
// it is; it waits at most left (0: as long as ctx allows) for that, and
// the making goes on past it: once for the variant in the repository,
// however many answer it at once.
func (r *Repository) attestWithin(ctx context.Context, orig cache.Manifest, n normalize.Result, left time.Duration) {
	s := r.s
	if s.attest == nil || s.made == nil || !n.Changed() {
		return
	}
	key := linkKey(r.remote.Upstream(), r.remote.Name(), n.Manifest.Digest)
	if s.attested.Contains(key) {
		return
	}
	if failed, ok := s.attestFailures.Get(key); ok && s.clock.Now().Sub(failed) < attestFailedFor {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.attestings.Do(context.WithoutCancel(ctx), key, func(ctx context.Context) (struct{}, error) {
			r.attest(ctx, key, orig, n)
			return struct{}{}, nil
		})
	}()
	var expired <-chan struct{}
	if left > 0 {
		c := make(chan struct{})
		stop := s.clock.AfterFunc(left, func() { close(c) })
		defer stop()
		expired = c
	}
	select {
	case <-done:
	case <-expired:
	case <-ctx.Done():
	}
}

// attest makes and stores the attestation of n's variant of orig in the
// repository (key), unless it has one. A failure is logged and remembered
// for attestFailedFor: the client has its variant, and a later answer
// tries again.
func (r *Repository) attest(ctx context.Context, key string, orig cache.Manifest, n normalize.Result) {
	s := r.s
	variant := n.Manifest
	if s.attested.Contains(key) {
		return
	}
	// Apart from every client's cancellation, and bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attestTimeout)
	defer cancel()
	if rec, err := s.store.GetReferrers(ctx, r.remote.Upstream(), r.remote.Name(), variant.Digest); err == nil && rec.Verified && len(rec.Manifests) > 0 {
		s.attested.Add(key, struct{}{})
		return
	}
	start := s.clock.Now()
	subject := ocispec.Descriptor{MediaType: variant.MediaType, Digest: variant.Digest, Size: int64(len(variant.Content))}
	a, err := s.attest.Make(ctx, derivation(r, orig, n), subject)
	made := []attest.Artifact{a}
	if err == nil && s.attest.Signer != nil {
		// cosign v3's bundle of the same signed envelope, beside it.
		var b attest.Artifact
		b, err = s.attest.MakeBundle(a, subject)
		made = append(made, b)
	}
	stored := 0
	var listed []ocispec.Descriptor
	for i, m := range made {
		if err != nil {
			break
		}
		// The bundle's config is the classic artifact's, stored with it.
		err = r.storeAttestation(ctx, orig.Digest, m, i == 0)
		stored += len(m.Manifest) + len(m.Envelope)
		listed = append(listed, m.Descriptor())
	}
	stored += len(a.Config) // one config, shared
	if err == nil {
		rec := cache.ReferrersRecord{Subject: variant.Digest, Manifests: listed, Verified: true, CheckedAt: s.clock.Now()}
		err = s.store.PutReferrers(ctx, r.remote.Upstream(), r.remote.Name(), rec)
	}
	if err != nil {
		s.attestFailures.Add(key, s.clock.Now())
		s.log.Error("attesting a variant failed", "upstream", r.remote.Upstream(), "repo", r.remote.Name(), "variant", variant.Digest, "error", err)
		return
	}
	s.attested.Add(key, struct{}{})
	s.log.Info("attested variant", "upstream", r.remote.Upstream(), "repo", r.remote.Name(), "variant", variant.Digest,
		"attestation", a.Digest, "signed", s.attest.Signer != nil, "artifacts", len(made), "bytes", stored,
		"seconds", s.clock.Now().Sub(start).Seconds())
}

// derivation is what the statement says of n's variant of orig here.
func derivation(r *Repository, orig cache.Manifest, n normalize.Result) attest.Derivation {
	v := n.Verdict
	return attest.Derivation{
		Repository:      r.remote.Name(),
		Upstream:        r.remote.Upstream(),
		Variant:         attest.Object{Digest: n.Manifest.Digest, MediaType: n.Manifest.MediaType},
		Original:        attest.Object{Digest: orig.Digest, MediaType: orig.MediaType},
		Rules:           v.Rules,
		Changes:         AttestedChanges(v),
		UnlistedChanges: v.UnlistedChanges,
		Limits:          attest.Limits{LayerSize: v.Limited.LayerSize, ZstdWindow: v.Limited.ZstdWindow},
	}
}

// AttestedChanges are a verdict's changes as its attestation states them
// (and as regnorm verify compares them).
func AttestedChanges(v cache.Normalization) []attest.Change {
	changes := make([]attest.Change, 0, len(v.Changes))
	for _, c := range v.Changes {
		changes = append(changes, attest.Change{Kind: c.Kind, Path: c.Path, Old: c.Old, New: c.New, Details: c.Details, Unlisted: c.Unlisted})
	}
	return changes
}

// storeAttestation writes a's blobs (its config too, with config) and
// manifest, each recorded as made from original (so admitted where the
// variant is), the records first, as the engine writes what it makes; the
// blobs are retained (never evicted): they cannot be made again on a read.
func (r *Repository) storeAttestation(ctx context.Context, original digest.Digest, a attest.Artifact, config bool) error {
	s := r.s
	type blob struct {
		dgst    digest.Digest
		content []byte
	}
	var blobs []blob
	if config {
		blobs = append(blobs, blob{a.ConfigDigest, a.Config})
	}
	blobs = append(blobs, blob{a.EnvelopeDigest, a.Envelope})
	for _, b := range blobs {
		if err := s.made.Retain(ctx, b.dgst); err != nil {
			return err
		}
		if err := s.made.PutDerived(ctx, cache.Derived{Digest: b.dgst, Kind: cache.DerivedConfig, Source: original, FromManifest: true}); err != nil {
			return err
		}
		in, err := s.made.NewBlob(ctx)
		if err != nil {
			return err
		}
		if _, err := in.Write(b.content); err != nil {
			return errors.Join(err, in.Cancel(ctx))
		}
		if err := in.Commit(ctx); err != nil {
			return err
		}
		if in.Digest() != b.dgst {
			return fmt.Errorf("stored an attestation blob as %s, want %s", in.Digest(), b.dgst)
		}
		r.learnDerived(ctx, b.dgst, original)
	}
	if err := s.made.PutDerived(ctx, cache.Derived{Digest: a.Digest, Kind: cache.DerivedManifest, Source: original}); err != nil {
		return err
	}
	m := cache.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: a.Digest, Content: a.Manifest}
	if err := s.store.PutManifest(ctx, r.remote.Upstream(), r.remote.Name(), m); err != nil {
		return err
	}
	r.learnDerived(ctx, a.Digest, original)
	return nil
}

// madeReferrers is the referrers list of a variant regnorm made: its
// attestation, from the repository's record, or none yet.
func (r *Repository) madeReferrers(ctx context.Context, variant digest.Digest) (ReferrersList, error) {
	rec, err := r.s.store.GetReferrers(ctx, r.remote.Upstream(), r.remote.Name(), variant)
	switch {
	case errors.Is(err, cache.ErrNotFound):
		return ReferrersList{Source: "cache"}, nil
	case err != nil:
		return ReferrersList{}, storageFailed(err)
	}
	return ReferrersList{Manifests: rec.Manifests, Source: "cache"}, nil
}

// attestationByTag answers cosign's tag sha256-<hex>.att when hex names a
// variant regnorm made and attested here (made): its attestation, admitted
// as the variant is. Any other such tag is the upstream's (made is false).
func (r *Repository) attestationByTag(ctx context.Context, tag string) (m Manifest, made bool, err error) {
	sub := attestationTag.FindStringSubmatch(tag)
	if sub == nil {
		return Manifest{}, false, nil
	}
	variant := digest.NewDigestFromEncoded(digest.SHA256, sub[1])
	o := object{dgst: variant}
	if _, made, err := r.derivedRecord(ctx, o); err != nil {
		return Manifest{}, true, storageFailed(err)
	} else if !made {
		return Manifest{}, false, nil
	}
	// This repository's own record says whether regnorm attested the
	// variant here (it is keyed by repository: it tells nothing of
	// others); only then is the tag regnorm's, and the client admitted
	// for it as for the variant.
	list, err := r.madeReferrers(ctx, variant)
	if err != nil {
		return Manifest{}, true, err
	}
	for _, d := range list.Manifests {
		if d.ArtifactType != attest.MediaTypeEnvelope {
			continue
		}
		if err := r.admit(ctx, o); err != nil {
			return Manifest{}, true, err
		}
		got, err := r.s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), d.Digest)
		if err != nil {
			return Manifest{}, true, errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "the attestation is not readable from the cache", err)
		}
		return Manifest{Manifest: got, Source: "cache"}, true, nil
	}
	// None made here (the variant was never answered by tag in this
	// repository): the tag is the upstream's, which has it only if someone
	// pushed the variant's bytes there and attested them.
	return Manifest{}, false, nil
}
