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
//
// A link is taken from an upstream's word (a 200 to a HEAD) only for an
// upstream that has sent the digest's bytes itself at least once: that it
// did is the sent record (PutSent), one per upstream and digest.
type LinkStore interface {
	HasLink(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error)
	PutLink(ctx context.Context, upstream, repo string, dgst digest.Digest) error
	HasSent(ctx context.Context, upstream string, dgst digest.Digest) (bool, error)
	PutSent(ctx context.Context, upstream string, dgst digest.Digest) error
}

var _ LinkStore = (*Store)(nil)

// HasLink reports whether upstream/repo is known to hold dgst. It reads one
// small object (on S3, one GET).
func (s *Store) HasLink(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
	return s.hasMark(ctx, "link "+upstream+"/"+repo, dgst, func() string { return linkPath(upstream, repo, dgst) })
}

// PutLink records that upstream/repo holds dgst.
func (s *Store) PutLink(ctx context.Context, upstream, repo string, dgst digest.Digest) error {
	return s.putMark(ctx, "link "+upstream+"/"+repo, dgst, func() string { return linkPath(upstream, repo, dgst) })
}

// HasSent reports whether upstream has sent bytes that verified against
// dgst. It reads one small object.
func (s *Store) HasSent(ctx context.Context, upstream string, dgst digest.Digest) (bool, error) {
	return s.hasMark(ctx, "sent "+upstream, dgst, func() string { return sentPath(upstream, dgst) })
}

// PutSent records that upstream has sent bytes that verified against dgst.
func (s *Store) PutSent(ctx context.Context, upstream string, dgst digest.Digest) error {
	return s.putMark(ctx, "sent "+upstream, dgst, func() string { return sentPath(upstream, dgst) })
}

// hasMark reports whether the empty object at path exists, for dgst.
func (s *Store) hasMark(ctx context.Context, what string, dgst digest.Digest, path func() string) (bool, error) {
	if err := dgst.Validate(); err != nil {
		return false, fmt.Errorf("has %s %q: %w", what, dgst, err)
	}
	_, err := s.driver.GetContent(ctx, path())
	switch err = notFound(err); {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("has %s@%s: %w", what, dgst, err)
}

// putMark writes the empty object at path, for dgst.
func (s *Store) putMark(ctx context.Context, what string, dgst digest.Digest, path func() string) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("put %s %q: %w", what, dgst, err)
	}
	if err := s.driver.PutContent(ctx, path(), nil); err != nil {
		return fmt.Errorf("put %s@%s: %w", what, dgst, err)
	}
	return nil
}
