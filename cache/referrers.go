package cache

import (
	"context"
	"fmt"
	"path"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/mediatype"
)

// ReferrersRecord remembers a subject's referrers list in one repository
// of one upstream, as regnorm last checked the upstream's, and when: like
// a tag record, it is the repository's own, and changes when someone
// signs or attests.
type ReferrersRecord struct {
	Subject digest.Digest `json:"subject"`
	// Manifests are the referrers' descriptors, unfiltered, in the
	// upstream's order; at most mediatype.MaxReferrers. When Verified,
	// each was checked against its manifest.
	Manifests []ocispec.Descriptor `json:"manifests"`
	// Refused are the digests the upstream listed whose manifests are not
	// referrers of Subject in the repository: remembered, like Manifests,
	// so that a refresh does not fetch them again. At most
	// mediatype.MaxReferrers.
	Refused []digest.Digest `json:"refused,omitempty"`
	// Verified says each of Manifests was read from its manifest, which
	// names Subject as its subject. A record without it is an upstream's
	// claim (written before regnorm checked them), and not used.
	Verified bool `json:"verified,omitempty"`
	// FromTag says the upstream has no referrers API and the list came
	// from the tag schema.
	FromTag   bool      `json:"fromTag,omitempty"`
	CheckedAt time.Time `json:"checkedAt"`
}

// ReferrersStore reads and writes referrers records.
type ReferrersStore interface {
	GetReferrers(ctx context.Context, upstream, repo string, subject digest.Digest) (ReferrersRecord, error)
	PutReferrers(ctx context.Context, upstream, repo string, rec ReferrersRecord) error
}

var _ ReferrersStore = (*Store)(nil)

// GetReferrers returns the record of subject's referrers in upstream/repo.
// A record that is not for subject, lists more than mediatype.MaxReferrers
// or a descriptor without a valid digest, or is larger than a record may
// be, is an error, never an answer.
func (s *Store) GetReferrers(ctx context.Context, upstream, repo string, subject digest.Digest) (ReferrersRecord, error) {
	if err := subject.Validate(); err != nil {
		return ReferrersRecord{}, fmt.Errorf("get referrers %q: %w", subject, err)
	}
	var rec ReferrersRecord
	if err := s.getJSON(ctx, referrersPath(upstream, repo, subject), &rec); err != nil {
		return ReferrersRecord{}, fmt.Errorf("get referrers of %s/%s@%s: %w", upstream, repo, subject, err)
	}
	if err := rec.check(subject); err != nil {
		return ReferrersRecord{}, fmt.Errorf("get referrers of %s/%s@%s: %w: %w", upstream, repo, subject, errBadRecord, err)
	}
	return rec, nil
}

// PutReferrers writes the record of rec.Subject's referrers in
// upstream/repo.
func (s *Store) PutReferrers(ctx context.Context, upstream, repo string, rec ReferrersRecord) error {
	if err := rec.check(rec.Subject); err != nil {
		return fmt.Errorf("put referrers of %s/%s@%s: %w", upstream, repo, rec.Subject, err)
	}
	if err := s.putJSON(ctx, referrersPath(upstream, repo, rec.Subject), rec); err != nil {
		return fmt.Errorf("put referrers of %s/%s@%s: %w", upstream, repo, rec.Subject, err)
	}
	return nil
}

func (rec ReferrersRecord) check(subject digest.Digest) error {
	if rec.Subject != subject {
		return fmt.Errorf("the record is for %q", rec.Subject)
	}
	if len(rec.Manifests) > mediatype.MaxReferrers {
		return fmt.Errorf("%d referrers, more than %d", len(rec.Manifests), mediatype.MaxReferrers)
	}
	if len(rec.Refused) > mediatype.MaxReferrers {
		return fmt.Errorf("%d refused referrers, more than %d", len(rec.Refused), mediatype.MaxReferrers)
	}
	for _, d := range rec.Manifests {
		if err := d.Digest.Validate(); err != nil {
			return fmt.Errorf("a referrer %q: %w", d.Digest, err)
		}
	}
	for _, d := range rec.Refused {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("a refused referrer %q: %w", d, err)
		}
	}
	return nil
}

func referrersPath(upstream, repo string, subject digest.Digest) string {
	return path.Join("/referrers", escapeSegment(upstream), repo, "_referrers", subject.Algorithm().String(), subject.Encoded())
}
