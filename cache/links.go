package cache

import (
	"context"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"
)

// LinkStore records which repositories are known to hold which digests
// upstream, as distribution's repository links do. The cache itself is
// global by digest; links are what lets the proxy serve an object under a
// repository only where upstream has it.
type LinkStore interface {
	HasLink(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error)
	PutLink(ctx context.Context, upstream, repo string, dgst digest.Digest) error
}

var _ LinkStore = (*Store)(nil)

// HasLink reports whether upstream/repo is known to hold dgst. It reads one
// small object (on S3, one GET).
func (s *Store) HasLink(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
	if err := dgst.Validate(); err != nil {
		return false, fmt.Errorf("has link %q: %w", dgst, err)
	}
	_, err := s.driver.GetContent(ctx, linkPath(upstream, repo, dgst))
	switch err = notFound(err); {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("has link %s/%s@%s: %w", upstream, repo, dgst, err)
}

// PutLink records that upstream/repo holds dgst.
func (s *Store) PutLink(ctx context.Context, upstream, repo string, dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("put link %q: %w", dgst, err)
	}
	if err := s.driver.PutContent(ctx, linkPath(upstream, repo, dgst), nil); err != nil {
		return fmt.Errorf("put link %s/%s@%s: %w", upstream, repo, dgst, err)
	}
	return nil
}
