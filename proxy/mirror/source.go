package mirror

import (
	"context"
	"io"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/normalize"
)

// source is what the rule engine reads an image through: a repository, as
// its client. It is an ordinary caller of the repository: every read is
// admitted (access.go) and verified, exactly as the client's own reads are.
type source struct{ r *Repository }

var _ normalize.Source = source{}

// Source is the repository as the rule engine reads it, as this client:
// child manifests, blobs read verified, downloads to make sure of, and
// links to what the engine made.
func (r *Repository) Source() normalize.Source { return source{r: r} }

func (src source) Upstream() string   { return src.r.remote.Upstream() }
func (src source) Repository() string { return src.r.remote.Name() }
func (src source) Identity() string   { return src.r.remote.Identity() }

func (src source) Manifest(ctx context.Context, dgst digest.Digest) (cache.Manifest, error) {
	m, err := src.r.Manifest(ctx, dgst.String(), nil)
	return m.Manifest, err
}

func (src source) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	b, err := src.r.open(ctx, dgst, 0, verifiedRead)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Ensure is open's way, so that the engine's reads are admitted as the
// client's own are (a download this client starts answers for it, with no
// HEAD beside it), and an evicted repackaged layer is rebuilt: it waits for
// a download to end instead of reading it, and opens nothing that is
// cached (on S3, an open is a request).
func (src source) Ensure(ctx context.Context, dgst digest.Digest) error {
	b, err := src.r.open(ctx, dgst, 0, statOnly)
	if err != nil {
		return err
	}
	defer b.Close()
	if sr, ok := b.ReadSeeker.(*blobfetch.Reader); ok {
		return sr.Wait()
	}
	return nil // in the cache
}

func (src source) Admit(ctx context.Context, dgst digest.Digest) error {
	return src.r.admit(ctx, object{dgst: dgst, blob: true})
}

func (src source) Learn(ctx context.Context, derived, from digest.Digest) {
	src.r.learnDerived(ctx, derived, from)
}

// rebuildLayer makes an evicted repackaged layer again from its original,
// d.Source (one the repository holds: another repository's source would be
// asked for in vain), as the client, who must be admitted for it.
func (r *Repository) rebuildLayer(ctx context.Context, d cache.Derived) error {
	if err := r.admit(ctx, object{dgst: d.Source, blob: true}); err != nil {
		return err
	}
	return engineError(r.s.engine.RebuildLayer(ctx, r.Source(), d))
}
