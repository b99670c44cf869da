package proxy

import (
	"context"
	"errors"
	"net/http"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
)

// Who may read what. The cache is global by digest, but an object is served
// under a repository only where both hold:
//
//  1. the repository holds it upstream. regnorm learns that from the
//     upstream's own answers for that repository (a download, a manifest
//     fetch, a HEAD) and keeps it as a link, like distribution's repository
//     links. Content regnorm made (a normalized manifest, a rewritten config,
//     a repackaged layer) is held where its source is held.
//  2. with forwarded credentials, the upstream said yes to the client's own
//     credentials for the repository within confirmTTL.
//
// What is not known is asked of the upstream, as the client: a HEAD of the
// object, or of the source regnorm made it from.

// subject is an upstream object to ask about.
type subject struct {
	dgst     digest.Digest
	manifest bool
}

// linkMemory remembers links known to exist, so the hot path reads none
// from the store. Bounded; a forgotten link costs one store read.
type linkMemory = lru.Cache[string, struct{}]

func newLinkMemory() *linkMemory {
	c, err := lru.New[string, struct{}](1 << 16)
	if err != nil {
		panic(err)
	}
	return c
}

func linkKey(upstream, repo string, dgst digest.Digest) string {
	return upstream + "\x00" + repo + "\x00" + dgst.String()
}

// holds reports whether upstream/repo is known to hold dgst.
func (s *Server) holds(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
	key := linkKey(upstream, repo, dgst)
	if s.links.Contains(key) {
		return true, nil
	}
	ok, err := s.store.HasLink(ctx, upstream, repo, dgst)
	if ok {
		s.links.Add(key, struct{}{})
	}
	return ok, err
}

// learn records that upstream/repo holds dgst. A link that fails to be
// written costs a HEAD upstream later, nothing more: it is logged, not
// returned.
func (s *Server) learn(ctx context.Context, upstream, repo string, dgst digest.Digest) {
	key := linkKey(upstream, repo, dgst)
	if s.links.Contains(key) {
		return
	}
	if err := s.store.PutLink(context.WithoutCancel(ctx), upstream, repo, dgst); err != nil {
		s.log.Warn("recording a repository link failed", "upstream", upstream, "repo", repo, "digest", dgst, "error", err)
		return
	}
	s.links.Add(key, struct{}{})
}

// admitted reports, without asking upstream, whether req's client may read
// req.digest under req.repo. When it may not (yet), ask is what to ask the
// upstream about: the digest itself, or the upstream object regnorm made it
// from.
func (s *Server) admitted(ctx context.Context, req distRequest) (ok bool, ask subject, err error) {
	credsOK := req.remote.Confirmed(s.clock.Now())
	linked, err := s.holds(ctx, req.remote.Upstream(), req.repo, req.digest)
	if err != nil {
		return false, subject{}, err
	}
	if linked && credsOK {
		return true, subject{}, nil
	}
	d, derived, err := s.derivedRecord(ctx, req)
	if err != nil || !derived {
		return false, subject{dgst: req.digest, manifest: !req.blob}, err
	}
	o, held, err := s.heldOrigin(ctx, req, d)
	src := subject{dgst: o.Source, manifest: d.From(o).SourceIsManifest()}
	if err != nil || linked || !held {
		return false, src, err
	}
	s.learn(ctx, req.remote.Upstream(), req.repo, req.digest)
	return credsOK, src, nil
}

// derivedRecord is how req.digest was made, when regnorm made it as the
// kind of object req asks for.
func (s *Server) derivedRecord(ctx context.Context, req distRequest) (cache.Derived, bool, error) {
	d, err := s.store.GetDerived(ctx, req.digest)
	switch {
	case errors.Is(err, cache.ErrNotFound):
		return cache.Derived{}, false, nil
	case err != nil:
		return cache.Derived{}, false, err
	case (d.Kind == cache.DerivedManifest) == req.blob:
		return cache.Derived{}, false, nil // a blob asked for as a manifest, or the reverse
	}
	return d, true, nil
}

// heldOrigin is the way d was made from an upstream object that req's
// repository holds, as far as regnorm knows (held); else the first way.
func (s *Server) heldOrigin(ctx context.Context, req distRequest, d cache.Derived) (o cache.Origin, held bool, err error) {
	origins := d.Origins()
	for _, o := range origins {
		held, err := s.holds(ctx, req.remote.Upstream(), req.repo, o.Source)
		if err != nil {
			return origins[0], false, err
		}
		if held {
			return o, true, nil
		}
	}
	return origins[0], false, nil
}

// admit lets req's client read req.digest under req.repo, asking the
// upstream when regnorm does not know (see the top of this file).
func (s *Server) admit(ctx context.Context, req distRequest) error {
	ok, sub, err := s.admitted(ctx, req)
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	if ok {
		return nil
	}
	return s.ask(ctx, req, sub)
}

// admitTag lets req's client read tags of req.repo: only the credentials
// matter, since the tag record is the repository's own. A yes is
// remembered for the client's credentials.
func (s *Server) admitTag(ctx context.Context, req distRequest) error {
	if req.remote.Confirmed(s.clock.Now()) {
		return nil
	}
	// Asked for with schema 1 too: the tag may be one.
	if _, err := req.remote.HeadManifest(ctx, req.tag, nil); err != nil {
		return err
	}
	req.remote.Confirm(s.clock.Now())
	return nil
}

// ask has the upstream tell req's client whether req.repo holds sub, with
// a HEAD. A yes is remembered: the repository's link to sub (and to
// req.digest, made from it), and the client's credentials for the
// repository.
func (s *Server) ask(ctx context.Context, req distRequest, sub subject) error {
	var err error
	if sub.manifest {
		// Asked for with schema 1 too: a source may be one.
		_, err = req.remote.HeadManifest(ctx, sub.dgst.String(), nil)
	} else {
		_, err = req.remote.HeadBlob(ctx, sub.dgst)
	}
	if err != nil {
		return unknownAsAsked(err, req)
	}
	s.learn(ctx, req.remote.Upstream(), req.repo, sub.dgst)
	req.remote.Confirm(s.clock.Now())
	if req.digest != "" && req.digest != sub.dgst {
		s.learn(ctx, req.remote.Upstream(), req.repo, req.digest)
	}
	return nil
}

// unknownAsAsked words an upstream's "not found" about what ask asked it
// as what the client asked for: the source of a blob may be a manifest,
// and the client is told of an unknown blob all the same.
func unknownAsAsked(err error, req distRequest) error {
	code := errcode.ManifestUnknown
	if req.blob {
		code = errcode.BlobUnknown
	}
	var e *errcode.Error
	if !errors.As(err, &e) || e.Status != http.StatusNotFound || e.Code == code {
		return err
	}
	asked := *e
	asked.Code = code
	return &asked
}

// learnDerived records that repo holds dgst, which regnorm made from
// source, when repo is known to hold source. No upstream request: what is
// not known here is asked when a client wants it.
func (s *Server) learnDerived(ctx context.Context, upstream, repo string, dgst, source digest.Digest) {
	if held, err := s.holds(ctx, upstream, repo, source); err == nil && held {
		s.learn(ctx, upstream, repo, dgst)
	}
}
