package proxy

import (
	"context"
	"io"
	"net/http"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// source is what the rule engine reads an image through: one upstream
// repository, as one client. Every read is admitted (access.go) and
// verified, exactly as the client's own reads are.
type source struct {
	s      *Server
	remote *upstream.Repository
}

var _ normalize.Source = source{}

func (s *Server) readingAs(remote *upstream.Repository) source {
	return source{s: s, remote: remote}
}

func (src source) Upstream() string   { return src.remote.Upstream() }
func (src source) Repository() string { return src.remote.Name() }
func (src source) Identity() string   { return src.remote.Identity() }

func (src source) request(dgst digest.Digest, blob bool) distRequest {
	return distRequest{remote: src.remote, repo: src.remote.Name(), digest: dgst, blob: blob}
}

func (src source) Manifest(ctx context.Context, dgst digest.Digest) (cache.Manifest, error) {
	m, _, err := src.s.manifestByDigest(ctx, src.request(dgst, false), nil)
	return m, err
}

func (src source) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	return src.s.openBlob(ctx, src.request(dgst, true), 0, true)
}

func (src source) Ensure(ctx context.Context, dgst digest.Digest) error {
	if err := src.s.admit(ctx, src.request(dgst, true)); err != nil {
		return err
	}
	return src.s.fetches.Ensure(ctx, src.remote, dgst)
}

func (src source) Learn(ctx context.Context, derived, from digest.Digest) {
	src.s.learnDerived(ctx, src.remote.Upstream(), src.remote.Name(), derived, from)
}

// rebuildLayer makes an evicted repackaged layer again from its original,
// as req's client, who must be admitted for the original: a repository
// holds a derived blob only where it holds its source.
func (s *Server) rebuildLayer(ctx context.Context, req distRequest, d cache.Derived) error {
	// From what req's repository holds: another repository's source would
	// be asked for in vain.
	o, _, err := s.heldOrigin(ctx, req, d)
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	d = d.From(o)
	src := req
	src.digest = d.Source
	if err := s.admit(ctx, src); err != nil {
		return err
	}
	return engineError(s.engine.RebuildLayer(ctx, s.readingAs(req.remote), d))
}
