package verify

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// signatureCheck is what checking an original's signatures found: where
// one verified, else why none did (a verdict), or an error when the
// registry could not tell.
type signatureCheck struct {
	verified string // where the one that verified was, e.g. "bundle sha256:… (referrers)"
	found    int    // signatures read
	firstErr error  // the first that did not verify, and why
}

// originalSignature checks the signatures cosign wrote of dgst in repo
// (the original's repository in its upstream) with key: cosign v3's
// bundles, found through the referrers API (or the tag schema's index
// where the registry has none), then the classic sha256-<hex>.sig tag.
// One that verifies with key and names dgst is enough. Every manifest and
// blob is read bounded and verified against its digest.
func originalSignature(ctx context.Context, repo *upstream.Repository, dgst digest.Digest, key crypto.PublicKey) (signatureCheck, error) {
	var c signatureCheck
	failed := func(what string, err error) {
		c.found++
		if c.firstErr == nil {
			c.firstErr = fmt.Errorf("%s: %w", what, err)
		}
	}
	refs, err := repo.Referrers(ctx, dgst)
	var e *errcode.Error
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
	case err != nil:
		return c, fmt.Errorf("list the referrers of the original %s: %w", dgst, err)
	}
	where := "referrers"
	if refs.FromTag {
		where = "tag " + upstream.ReferrersTag(dgst)
	}
	read, bundles := 0, 0 // referrers' manifests, and bundles, read: each at most maxCandidates
	for _, d := range refs.Manifests {
		// A registry that lists an artifact by its config's type (the
		// empty one, as go-containerregistry's does) hides a bundle's
		// type: such entries are read too, and their manifests decide.
		if d.ArtifactType != cosign.MediaTypeBundle && d.ArtifactType != ocispec.MediaTypeEmptyJSON && d.ArtifactType != "" {
			continue
		}
		if read == maxCandidates {
			break
		}
		read++
		m, err := repo.GetManifest(ctx, d.Digest.String(), []string{ocispec.MediaTypeImageManifest}, d.Digest)
		if err != nil {
			return c, fmt.Errorf("read the referrer %s of the original: %w", d.Digest, err)
		}
		var man ocispec.Manifest
		if err := json.Unmarshal(m.Content, &man); err != nil || man.ArtifactType != cosign.MediaTypeBundle {
			continue
		}
		for _, l := range man.Layers {
			if l.MediaType != cosign.MediaTypeBundle {
				continue
			}
			if bundles == maxCandidates {
				break
			}
			bundles++
			b, err := readBlob(ctx, repo, l)
			if err != nil {
				return c, fmt.Errorf("the signature %s of the original: %w", m.Digest, err)
			}
			what := fmt.Sprintf("bundle %s (%s)", m.Digest, where)
			if _, err := cosign.VerifyBundle(ctx, b, key, cosign.PredicateTypeSign, dgst); err != nil {
				failed(what, err)
				continue
			}
			c.found++
			c.verified = what
			return c, nil
		}
	}

	tag := cosign.SignatureTag(dgst)
	m, err := repo.GetManifest(ctx, tag, []string{ocispec.MediaTypeImageManifest}, "")
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
		return c, nil
	case err != nil:
		return c, fmt.Errorf("read the tag %s: %w", tag, err)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(m.Content, &man); err != nil {
		failed("tag "+tag, fmt.Errorf("not an image manifest: %w", err))
		return c, nil
	}
	n := 0
	for _, l := range man.Layers {
		sig, ok := l.Annotations[cosign.AnnotationSignature]
		if l.MediaType != cosign.MediaTypeSimpleSigning || !ok {
			continue
		}
		if n == maxCandidates {
			break
		}
		n++
		payload, err := readBlob(ctx, repo, l)
		if err != nil {
			return c, fmt.Errorf("the signature %s of the original: %w", l.Digest, err)
		}
		what := fmt.Sprintf("signature %s (tag %s)", l.Digest, tag)
		if err := cosign.VerifySimpleSigning(payload, sig, key, dgst); err != nil {
			failed(what, err)
			continue
		}
		c.found++
		c.verified = what
		return c, nil
	}
	return c, nil
}
