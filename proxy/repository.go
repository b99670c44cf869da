package proxy

import (
	"context"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// repository is one repository of an upstream, read as one client: the one
// way anything reads a repository's content. The HTTP handlers, warm and
// the rule engine (through source) ask it for manifests, blobs and tags; it
// admits the client (access.go), answers from the cache or the upstream, and
// has the engine make the client's variant. It is cheap: make one per
// request.
type repository struct {
	s      *Server
	remote *upstream.Repository
}

// repository is remote's repository, read as remote's client.
func (s *Server) repository(remote *upstream.Repository) *repository {
	return &repository{s: s, remote: remote}
}

// Upstream is the upstream's name, as containerd sends it in ns.
func (r *repository) Upstream() string { return r.remote.Upstream() }

// Name is the repository's name, e.g. library/redis.
func (r *repository) Name() string { return r.remote.Name() }

// manifestAnswer is a manifest as the repository answers it.
type manifestAnswer struct {
	cache.Manifest
	// source is where its bytes came from: "cache" or "upstream".
	source string
	// stale is set when a tag's record was served past its time because
	// the upstream could not answer.
	stale bool
}

// tags is a page of the repository's tags, from the upstream as the client
// (tags change, so they are not cached): checked and bounded by
// upstream.Repository.Tags.
func (r *repository) tags(ctx context.Context, n int, last string) (upstream.TagPage, error) {
	return r.remote.Tags(ctx, n, last)
}
