package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Replicas of one cache share its work: a blob's download, a manifest's
// fetch and a variant's making each have an owner (replicas.Set.Owner),
// which does it once for every replica; the others ask it and relay its
// answer. Admission stays here, on the replica the client asked: a
// Repository admits its client as it always does, and asks the owner only
// for what it would otherwise have asked the upstream, as the same client
// (same upstream configured alike, same repository and credentials), so
// the owner's answer is the upstream's to that client. With forwarded
// credentials, each client's answer is its own: nothing is asked of
// another replica. An ask costs the client's request one upstream request
// of its budget, and the owner may spend no more than what is left of it.

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

// askOf is what r asks an owner for work of kind, once it has spent one
// upstream request of ctx's budget on it.
func (r *Repository) askOf(ctx context.Context, kind string) (replicas.Ask, error) {
	if err := upstream.Spend(ctx); err != nil {
		return replicas.Ask{}, err
	}
	budget := upstream.Left(ctx)
	if budget < 0 {
		budget = upstreamAskBudget
	}
	return replicas.Ask{Kind: kind, Upstream: r.remote.Upstream(), Repo: r.remote.Name(), Config: r.remote.Fingerprint(), Budget: budget}, nil
}

// upstreamAskBudget is what an ask may cost the owner when the asker's
// request has no budget of its own (a background normalization).
const upstreamAskBudget = 512

// standing reports whether an owner's error is its answer (an
// *errcode.Error), not a failure to answer.
func standing(err error) bool {
	var answer *errcode.Error
	return errors.As(err, &answer)
}

// download is what the fetcher downloads dgst through for r: the upstream,
// or its owner's download of it, relayed.
func (r *Repository) download(dgst digest.Digest) blobfetch.Remote {
	return remote{repo: r, Repository: r.remote, owner: r.owner(replicas.KindBlob, dgst.String())}
}

// remote is a blobfetch.Remote: an upstream repository, read through the
// blob's owner when there is one.
type remote struct {
	*upstream.Repository
	repo  *Repository
	owner *replicas.Peer
}

func (u remote) GetBlob(ctx context.Context, dgst digest.Digest) (blobfetch.Body, error) {
	if u.owner != nil {
		a, err := u.repo.askOf(ctx, replicas.KindBlob)
		if err != nil {
			return nil, err
		}
		a.Digest = dgst
		rc, size, err := u.owner.GetBlob(ctx, a)
		switch {
		case err == nil:
			if err := u.CheckBlobSize(size); err != nil {
				rc.Close()
				return nil, err
			}
			return &fromOwner{ctx: ctx, remote: u.Repository, owner: u.owner, dgst: dgst, size: size, rc: rc, owned: true,
				digester: dgst.Algorithm().Digester()}, nil
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

// fromOwner is a blob's body from its owner; where the owner stops, it
// goes on from the upstream with a range request, so the download's
// readers never see the owner go. The download verifies the whole, as
// always; fromOwner hashes it too, to know whom to blame: a whole that does
// not verify, of which the owner sent any part, passes the owner over, so
// the client's retry is not sent it again.
type fromOwner struct {
	ctx        context.Context
	remote     *upstream.Repository
	owner      *replicas.Peer
	dgst       digest.Digest
	size, off  int64
	rc         io.ReadCloser
	owned      bool // rc is the owner's
	digester   digest.Digester
	ownerBytes int64 // how many the owner sent
}

// errOwnerUnverified is why a blob from an owner failed: what it sent,
// with what the upstream sent after, does not hash to its digest.
var errOwnerUnverified = errors.New("the blob the owner sent does not verify")

func (b *fromOwner) Size() int64 { return b.size }

func (b *fromOwner) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.off += int64(n)
	b.digester.Hash().Write(p[:n])
	if b.owned {
		b.ownerBytes += int64(n)
	}
	if err == io.EOF && b.ownerBytes > 0 && b.digester.Digest() != b.dgst {
		err = fmt.Errorf("%w: %s hashes to %s", errOwnerUnverified, b.dgst, b.digester.Digest())
		b.owner.PassOver(err)
		if b.owned {
			b.owner.Failed(replicas.KindBlob, err)
		}
		return n, err
	}
	if err == nil || err == io.EOF || !b.owned || b.ctx.Err() != nil {
		return n, err
	}
	b.owner.Failed(replicas.KindBlob, err)
	b.rc.Close()
	b.rc, b.owned = b.remote.GetBlobFrom(b.ctx, b.dgst, b.off, b.size), false
	if n > 0 {
		return n, nil
	}
	return b.Read(p)
}

func (b *fromOwner) Close() error { return b.rc.Close() }

// manifestFromOwner is the manifest ref as its owner answers it, when
// another replica owns it; done is false when r must fetch it itself.
func (r *Repository) manifestFromOwner(ctx context.Context, ref string, accept []string) (m Manifest, done bool, err error) {
	o := r.owner(replicas.KindManifest, r.remote.Name()+" "+ref)
	if o == nil {
		return Manifest{}, false, nil
	}
	a, err := r.askOf(ctx, replicas.KindManifest)
	if err != nil {
		return Manifest{}, true, err
	}
	a.Ref, a.Accept = ref, accept
	cm, stale, err := o.GetManifest(ctx, a)
	switch {
	case err == nil:
		return Manifest{Manifest: cm, Source: "upstream", Stale: stale}, true, nil
	case standing(err):
		return Manifest{}, true, err
	}
	return Manifest{}, false, nil
}

// variantByOwner has the owner of m's variant for rules make it, when
// another replica owns it and none is recorded yet: it is then read from
// the cache as if made here. The owner's answer that it is still at work
// stands; a failure to answer leaves the work to this replica.
func (r *Repository) variantByOwner(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) error {
	o := r.owner(replicas.KindVariant, r.remote.Name()+" "+m.Digest.String()+" "+rules.Key())
	if o == nil || !normalize.MayNeed(m, rules) {
		return nil
	}
	if _, ok := r.s.engine.Verdict(ctx, m, rules); ok {
		return nil
	}
	wait = min(wait, replicas.MaxWait)
	// One ask for all this replica's clients of the variant (that wait as
	// long), as one making of it.
	key := o.URL() + " " + r.remote.Identity() + " " + m.Digest.String() + " " + rules.Key() + " " + wait.String()
	_, err := r.s.variantAsks.Do(ctx, key, func(ctx context.Context) (struct{}, error) {
		a, err := r.askOf(ctx, replicas.KindVariant)
		if err != nil {
			return struct{}{}, err
		}
		a.Digest, a.Rules, a.Wait = m.Digest, rules.Key(), wait
		return struct{}{}, o.MakeVariant(ctx, a)
	})
	var answer *errcode.Error
	switch {
	case errors.As(err, &answer) && answer.Status == http.StatusServiceUnavailable:
		// The owner is at work, or too busy to be: as the engine here
		// would say it (normalize.ErrBusy), the client's answer as sent.
		answer.Err = errors.Join(answer.Err, normalize.ErrBusy)
		return answer
	case err != nil && standing(err):
		return err
	case ctx.Err() != nil:
		// The caller stopped waiting: not a reason to start the work here.
		return ctx.Err()
	}
	return nil
}
