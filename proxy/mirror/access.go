package mirror

import (
	"context"
	"errors"
	"net/http"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
)

// Who may read what. The cache is global by digest, but an object is served
// under a repository only where both hold:
//
//  1. the repository holds it upstream. regnorm learns that from the
//     upstream's own answers for that repository (a download, a manifest
//     fetch, a HEAD) and keeps it as a link, like distribution's repository
//     links. Content regnorm made (a normalized manifest, a rewritten config,
//     a repackaged layer) is held where its source is held, and where the
//     upstream holds the same bytes themselves: a digest names bytes, and
//     what regnorm made from one repository's image can be another's own.
//  2. with forwarded credentials, the upstream said yes to the client's own
//     credentials for the repository within confirmTTL.
//
// What is not known is asked of the upstream, as the client: a HEAD of the
// object, or of the source regnorm made it from (then of the object, when
// the repository does not hold that source). A HEAD's 200 is the
// upstream's word about its own repositories, and taken as such only from
// an upstream that has sent the digest's bytes at least once (the sent
// record, one per upstream and digest): else it is asked to send them, as
// the client, and they must verify. So no upstream's word reaches bytes
// that only another upstream sent: anyone may answer a HEAD with 200.
//
// Every reader asks through a Repository (repository.go), so this is
// decided here and nowhere else.

// storageFailed is what a client is answered when the cache does not
// answer a read admission or an answer depends on.
func storageFailed(err error) *errcode.Error {
	return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
}

// object is what a client asks for by digest: a manifest or a blob.
type object struct {
	dgst digest.Digest
	blob bool
}

// linkMemory remembers links known to exist, so the hot path reads none
// from the store. Bounded; a forgotten link costs one store read.
type linkMemory = lru.Cache[string, struct{}]

func linkKey(upstream, repo string, dgst digest.Digest) string {
	return upstream + "\x00" + repo + "\x00" + dgst.String()
}

// holds reports whether upstream/repo is known to hold dgst.
func (s *Service) holds(ctx context.Context, upstream, repo string, dgst digest.Digest) (bool, error) {
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

// learn records that upstream/repo holds dgst: only once the upstream has
// sent its bytes (hasSent), or for what regnorm made from them. A link that
// fails to be written costs a HEAD upstream later, nothing more: it is
// logged, not returned.
func (s *Service) learn(ctx context.Context, upstream, repo string, dgst digest.Digest) {
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

// sentKey is the key of upstream's sent record of dgst in the link memory:
// no repository has an empty name.
func sentKey(upstream string, dgst digest.Digest) string { return linkKey(upstream, "", dgst) }

// hasSent reports whether upstream has sent bytes that verified against dgst.
func (s *Service) hasSent(ctx context.Context, upstream string, dgst digest.Digest) (bool, error) {
	key := sentKey(upstream, dgst)
	if s.links.Contains(key) {
		return true, nil
	}
	ok, err := s.store.HasSent(ctx, upstream, dgst)
	if ok {
		s.links.Add(key, struct{}{})
	}
	return ok, err
}

// markSent records that upstream sent bytes that verified against dgst,
// and that repo holds it. Not written: costs the proof again later.
func (s *Service) markSent(ctx context.Context, upstream, repo string, dgst digest.Digest) {
	if key := sentKey(upstream, dgst); !s.links.Contains(key) {
		if err := s.store.PutSent(context.WithoutCancel(ctx), upstream, dgst); err != nil {
			s.log.Warn("recording what an upstream sent failed", "upstream", upstream, "digest", dgst, "error", err)
			return
		}
		s.links.Add(key, struct{}{})
	}
	s.learn(ctx, upstream, repo, dgst)
}

// SentBy is the fetcher's Sent: whether r's upstream has sent dgst's bytes
// before. A cache that does not answer says no: the download costs
// bandwidth, nothing more.
func (s *Service) SentBy(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) bool {
	ok, err := s.hasSent(ctx, r.Upstream(), dgst)
	return ok && err == nil
}

// Answered is the fetcher's OnAnswered: upstream answered 200 to r's
// client's download of dgst, so it takes the client's credentials for the
// repository. That the repository holds dgst waits for the bytes (Sent).
func (s *Service) Answered(_ context.Context, r blobfetch.Remote, _ digest.Digest) {
	// The fetcher is handed this package's remotes only; another Remote
	// would go unconfirmed, which costs a HEAD later, nothing more.
	if up, ok := r.(remote); ok {
		up.Confirm(s.clock.Now())
	}
}

// Sent is the fetcher's OnSent: the bytes upstream sent for r's download
// of dgst verified.
func (s *Service) Sent(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) {
	s.markSent(ctx, r.Upstream(), r.Name(), dgst)
}

func (r *Repository) holds(ctx context.Context, dgst digest.Digest) (bool, error) {
	return r.s.holds(ctx, r.remote.Upstream(), r.remote.Name(), dgst)
}

func (r *Repository) learn(ctx context.Context, dgst digest.Digest) {
	r.s.learn(ctx, r.remote.Upstream(), r.remote.Name(), dgst)
}

// fetched records that the upstream sent dgst's bytes for the repository
// and they verified.
func (r *Repository) fetched(ctx context.Context, dgst digest.Digest) {
	r.s.markSent(ctx, r.remote.Upstream(), r.remote.Name(), dgst)
}

// admitted reports, without asking upstream, whether the client may read o
// here. When it may not (yet), ask is what to ask the upstream about: o
// itself, or the upstream object regnorm made it from. What regnorm made
// and the repository holds through its source is remembered as held (a
// link), so that the next read finds it at once.
func (r *Repository) admitted(ctx context.Context, o object) (ok bool, ask object, err error) {
	ok, ask, bySource, err := r.judge(ctx, o)
	if bySource {
		r.learn(ctx, o.dgst)
	}
	return ok, ask, err
}

// judge is admitted without writing anything: bySource says the repository
// holds o, which regnorm made, through the source it was made from (not
// by a link of its own).
func (r *Repository) judge(ctx context.Context, o object) (ok bool, ask object, bySource bool, err error) {
	credsOK := r.remote.Confirmed(r.s.clock.Now())
	linked, err := r.holds(ctx, o.dgst)
	if err != nil {
		return false, object{}, false, err
	}
	if linked && credsOK {
		return true, object{}, false, nil
	}
	d, derived, err := r.derivedRecord(ctx, o)
	if err != nil || !derived {
		return false, o, false, err
	}
	origin, held, err := r.heldOrigin(ctx, d)
	src := object{dgst: origin.Source, blob: !d.From(origin).SourceIsManifest()}
	if err != nil || linked || !held {
		return false, src, false, err
	}
	return credsOK, src, true, nil
}

// derivedRecord is how o was made, when regnorm made it as the kind of
// object o is.
func (r *Repository) derivedRecord(ctx context.Context, o object) (cache.Derived, bool, error) {
	d, err := r.s.store.GetDerived(ctx, o.dgst)
	switch {
	case errors.Is(err, cache.ErrNotFound):
		return cache.Derived{}, false, nil
	case err != nil:
		return cache.Derived{}, false, err
	case (d.Kind == cache.DerivedManifest) == o.blob:
		return cache.Derived{}, false, nil // a blob asked for as a manifest, or the reverse
	}
	return d, true, nil
}

// heldOrigin is the way d was made from an upstream object that the
// repository holds, as far as regnorm knows (held); else the first way.
func (r *Repository) heldOrigin(ctx context.Context, d cache.Derived) (o cache.Origin, held bool, err error) {
	origins := d.Origins()
	for _, o := range origins {
		held, err := r.holds(ctx, o.Source)
		if err != nil {
			return origins[0], false, err
		}
		if held {
			return o, true, nil
		}
	}
	return origins[0], false, nil
}

// admit lets the client read o here, asking the upstream when regnorm does
// not know (see the top of this file).
func (r *Repository) admit(ctx context.Context, o object) error {
	ok, sub, err := r.admitted(ctx, o)
	if err != nil {
		return storageFailed(err)
	}
	if ok {
		return nil
	}
	return r.ask(ctx, o, sub)
}

// admitTag lets the client read tag: only the credentials matter, since
// the tag record is the repository's own. A yes is remembered for the
// client's credentials.
func (r *Repository) admitTag(ctx context.Context, tag string) error {
	if r.remote.Confirmed(r.s.clock.Now()) {
		return nil
	}
	// Asked for with schema 1 too: the tag may be one.
	if _, err := r.remote.HeadManifest(ctx, tag, nil); err != nil {
		return err
	}
	r.remote.Confirm(r.s.clock.Now())
	return nil
}

// ask has the upstream tell the client whether the repository holds sub,
// with a HEAD, for the client's read of o from the cache. A yes is
// remembered: the repository's link to sub (and to o, made from it), and
// the client's credentials for the repository. It stands only once the
// upstream has sent sub's bytes (prove).
//
// When sub is the source o was made from and the upstream does not hold
// it here, o itself is asked about: the same bytes can be the upstream's
// own in this repository (a config one image's mended diff IDs make is
// another image's config as it is), and the digest names the bytes, not
// how regnorm came by them.
func (r *Repository) ask(ctx context.Context, o, sub object) error {
	sub, err := r.askHead(ctx, o, sub)
	if err != nil {
		return err
	}
	if err := r.prove(ctx, sub); err != nil {
		return unknownAsAsked(err, o)
	}
	r.learn(ctx, sub.dgst)
	if o.dgst != sub.dgst {
		r.learn(ctx, o.dgst)
	}
	return nil
}

// askHead is ask's question without the proof: enough for a client that
// reads the upstream's own download of o, not the cache. It says which of
// o and sub the upstream holds, and remembers only the client's
// credentials.
func (r *Repository) askHead(ctx context.Context, o, sub object) (object, error) {
	err := r.head(ctx, sub)
	if err != nil && sub != o && errcode.StatusOf(err) == http.StatusNotFound {
		switch err2 := r.head(ctx, o); {
		case err2 == nil:
			sub, err = o, nil
		case errcode.StatusOf(err2) != http.StatusNotFound:
			err = err2 // unanswered, rather than unknown
		}
	}
	if err != nil {
		return object{}, unknownAsAsked(err, o)
	}
	r.remote.Confirm(r.s.clock.Now())
	return sub, nil
}

// prove makes sure the upstream has sent o's bytes once: if it never did,
// it is asked to now, as the client, and they must verify. A manifest is
// small; a blob is downloaded from it as any download is (bounded by the
// fetcher, shared by the upstream's clients, recorded by OnSent): one
// download per upstream and digest, the price of a cache shared by
// upstreams that do not trust one another.
func (r *Repository) prove(ctx context.Context, o object) error {
	up := r.remote.Upstream()
	if ok, err := r.s.hasSent(ctx, up, o.dgst); err != nil {
		return storageFailed(err)
	} else if ok {
		return nil
	}
	if o.blob {
		if err := r.s.fetches.Fetch(ctx, r.download(o.dgst), o.dgst); err != nil {
			return downloadFailed(ctx, err)
		}
		return nil
	}
	// The clients of one identity share one manifest fetch.
	key := "prove " + r.remote.Identity() + " " + o.dgst.String()
	_, err := r.s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		if _, err := fetchManifest(ctx, r.remote, o.dgst.String(), nil, o.dgst); err != nil {
			return nil, err
		}
		r.fetched(ctx, o.dgst)
		return nil, nil
	})
	return err
}

// head asks the upstream, as the client, whether the repository holds o.
func (r *Repository) head(ctx context.Context, o object) error {
	if o.blob {
		_, err := r.remote.HeadBlob(ctx, o.dgst)
		return err
	}
	// Asked for with schema 1 too: a source may be one.
	_, err := r.remote.HeadManifest(ctx, o.dgst.String(), nil)
	return err
}

// unknownAsAsked words an upstream's "not found" about what ask asked it
// as what the client asked for: the source of a blob may be a manifest,
// and the client is told of an unknown blob all the same.
func unknownAsAsked(err error, o object) error {
	code := errcode.ManifestUnknown
	if o.blob {
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

// learnDerived records that the repository holds dgst, which regnorm made
// from source, when it is known to hold source. No upstream request: what
// is not known here is asked when a client wants it.
func (r *Repository) learnDerived(ctx context.Context, dgst, source digest.Digest) {
	if held, err := r.holds(ctx, source); err == nil && held {
		r.learn(ctx, dgst)
	}
}
