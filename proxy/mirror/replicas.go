package mirror

import (
	"context"
	"errors"
	"io"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Replicas of one cache share its work: a blob's download, a manifest's
// fetch and a variant's making each have an owner (replicas.Set.Owner),
// which does it once for every replica; the others ask it and relay its
// answer. Admission stays here, on the replica the client asked: a
// Repository admits its client as it always does, and asks the owner only
// for what it would otherwise have asked the upstream, as the same client
// (same upstream, repository and credentials), so the owner's answer is the
// upstream's to that client. With forwarded credentials, each client's
// answer is its own: nothing is asked of another replica.

// owner is the replica that does work of kind, which key names, for r's
// client; nil when this one does: with one replica, with forwarded
// credentials, and for the work another replica asked r to do (a replica
// asked is the owner, whatever it thinks: nothing is passed on twice).
func (r *Repository) owner(kind, key string) *replicas.Peer {
	if r.s.replicas == nil || r.serves == kind || r.remote.Forwards() {
		return nil
	}
	return r.s.replicas.Owner(kind + " " + r.remote.Upstream() + " " + key)
}

// ForReplica is r doing kind of work (replicas.KindBlob, …) that another
// replica asked of it, as its owner: that work is done here.
func (r *Repository) ForReplica(kind string) *Repository {
	c := *r
	c.serves = kind
	return &c
}

// standing reports whether an owner's error is its answer (an
// *errcode.Error), not a failure to answer.
func standing(err error) bool {
	var answer *errcode.Error
	return errors.As(err, &answer)
}

// download is what the fetcher downloads dgst through for r: the upstream,
// or its owner's download of it, relayed.
func (r *Repository) download(dgst digest.Digest) blobfetch.Remote {
	return remote{Repository: r.remote, owner: r.owner(replicas.KindBlob, dgst.String())}
}

// remote is a blobfetch.Remote: an upstream repository, read through the
// blob's owner when there is one.
type remote struct {
	*upstream.Repository
	owner *replicas.Peer
}

func (u remote) GetBlob(ctx context.Context, dgst digest.Digest) (blobfetch.Body, error) {
	if u.owner != nil {
		rc, size, err := u.owner.GetBlob(ctx, u.Upstream(), u.Name(), dgst)
		switch {
		case err == nil:
			if err := u.CheckBlobSize(size); err != nil {
				rc.Close()
				return nil, err
			}
			return &relay{ctx: ctx, remote: u.Repository, dgst: dgst, size: size, rc: rc, fromOwner: true}, nil
		case standing(err):
			return nil, err
		}
	}
	b, err := u.Repository.GetBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// relay is a blob's body from its owner; where the owner stops, it goes on
// from the upstream with a range request, so the download's readers never
// see the owner go. The download verifies the whole, as always.
type relay struct {
	ctx       context.Context
	remote    *upstream.Repository
	dgst      digest.Digest
	size, off int64
	rc        io.ReadCloser
	fromOwner bool
}

func (b *relay) Size() int64 { return b.size }

func (b *relay) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.off += int64(n)
	if err == nil || err == io.EOF || !b.fromOwner || b.ctx.Err() != nil {
		return n, err
	}
	b.rc.Close()
	b.rc, b.fromOwner = b.remote.GetBlobFrom(b.ctx, b.dgst, b.off, b.size), false
	if n > 0 {
		return n, nil
	}
	return b.Read(p)
}

func (b *relay) Close() error { return b.rc.Close() }

// manifestFromOwner is the manifest ref as its owner answers it, when another
// replica owns it; done is false when r must fetch it itself.
func (r *Repository) manifestFromOwner(ctx context.Context, ref string, accept []string) (m Manifest, done bool, err error) {
	o := r.owner(replicas.KindManifest, r.remote.Name()+" "+ref)
	if o == nil {
		return Manifest{}, false, nil
	}
	cm, stale, err := o.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), ref, accept)
	switch {
	case err == nil:
		return Manifest{Manifest: cm, Source: "upstream", Stale: stale}, true, nil
	case standing(err):
		return Manifest{}, true, err
	}
	return Manifest{}, false, nil
}
