package mirror

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// manifestFetchTimeout bounds one upstream manifest request, which many
// clients may be waiting on. It runs apart from each client's cancellation
// (one leaving does not fail the others), and ends manifestFetchGrace after
// the last has left (flight.Group): a fetch nobody waits for lets go of its
// memory and its upstream connection.
const manifestFetchTimeout = 2 * time.Minute

// manifestFetchGrace is how long a manifest fetch nobody waits for goes
// on: long enough for a client that retries, or the next request of one
// that ran out of its budget, to find it, as a download's orphan grace.
const manifestFetchGrace = 10 * time.Second

// anchoredTag is the grammar of a tag: what the router lets through, and
// what reaches the upstream in a path.
var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// Manifest is a manifest as a Repository answers it.
type Manifest struct {
	cache.Manifest
	// Source is where its bytes came from: "cache" or "upstream".
	Source string
	// Stale is set when a tag's record was served past its time because
	// the upstream could not answer.
	Stale bool
}

// Manifest is the manifest ref names (a tag or a digest) for the client, as
// the upstream has it: admitted (access.go), from the cache or the upstream.
// A tag's record is revalidated once it is older than the tag TTL, and
// served stale when the upstream cannot answer. accept is the media types
// the client takes; none, any. cosign's tag sha256-<hex>.att of a variant
// regnorm made is its attestation (attest.go).
func (r *Repository) Manifest(ctx context.Context, ref string, accept []string) (Manifest, error) {
	if strings.Contains(ref, ":") {
		dgst, err := digest.Parse(ref)
		if err != nil {
			return Manifest{}, errcode.New(http.StatusBadRequest, errcode.DigestInvalid, "invalid digest "+ref, err)
		}
		return r.manifestByDigest(ctx, dgst, accept)
	}
	if !anchoredTag.MatchString(ref) {
		return Manifest{}, errcode.New(http.StatusBadRequest, errcode.TagInvalid, fmt.Sprintf("%q is not a tag", ref), nil)
	}
	if m, made, err := r.attestationByTag(ctx, ref); made {
		return m, err
	}
	if err := r.admitTag(ctx, ref); err != nil {
		return Manifest{}, err
	}
	return r.manifestByTag(ctx, ref, accept)
}

// manifestByDigest returns the manifest dgst names for the client: from
// the cache once the client is admitted (access.go), else from the upstream,
// as the client, whose answer admits it.
func (r *Repository) manifestByDigest(ctx context.Context, dgst digest.Digest, accept []string) (Manifest, error) {
	s := r.s
	o := object{dgst: dgst}
	admitted, sub, err := r.admitted(ctx, o)
	if err != nil {
		return Manifest{}, storageFailed(err)
	}
	m, err := s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), dgst)
	if err == nil {
		if !admitted {
			if err := r.ask(ctx, o, sub); err != nil {
				return Manifest{}, err
			}
		}
		s.metrics.CacheRequests.WithLabelValues("manifest", "hit").Inc()
		return Manifest{Manifest: m, Source: "cache"}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
	}
	s.metrics.CacheRequests.WithLabelValues("manifest", "miss").Inc()
	if d, err := s.store.GetDerived(ctx, dgst); err == nil && d.Kind == cache.DerivedManifest {
		// Made here, and lost: upstream never had it.
		return Manifest{}, errcode.New(http.StatusNotFound, errcode.ManifestUnknown, "manifest unknown; pull by tag to make it again", nil)
	}
	// One fetch per client identity: the upstream's answer is for these
	// credentials.
	key := "digest " + r.remote.Identity() + " " + dgst.String()
	v, err := s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		var m cache.Manifest
		if owned, done, err := r.manifestFromOwner(ctx, dgst.String(), accept); done {
			// The owner fetched and cached it.
			if err != nil {
				return nil, err
			}
			m = owned.Manifest
		} else {
			if m, err = fetchManifest(ctx, r.remote, dgst.String(), accept, dgst); err != nil {
				return nil, err
			}
			if err := s.store.PutManifest(ctx, r.remote.Upstream(), r.remote.Name(), m); err != nil {
				s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
			}
		}
		// Learnt here, not by the callers: the fetch may outlive them all
		// (its grace), and what it cached must still be admitted.
		r.fetched(ctx, dgst)
		r.remote.Confirm(s.clock.Now())
		return m, nil
	})
	if err != nil {
		return Manifest{}, err
	}
	return Manifest{Manifest: v.(cache.Manifest), Source: "upstream"}, nil
}

// manifestByTag answers from a fresh tag record, else asks upstream: a HEAD
// to revalidate what is cached, a GET for what is not. When upstream cannot
// answer, a stale record is better than a failed pull.
func (r *Repository) manifestByTag(ctx context.Context, tag string, accept []string) (Manifest, error) {
	s := r.s
	rec, err := s.store.GetTag(ctx, r.remote.Upstream(), r.remote.Name(), tag)
	haveRec := err == nil && accepts(accept, rec.MediaType)
	if haveRec && s.clock.Now().Sub(rec.CheckedAt) < s.tagTTL {
		if m, err := s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), rec.Digest); err == nil {
			s.metrics.CacheRequests.WithLabelValues("manifest", "hit").Inc()
			// The tag record is the repository's own: upstream sent it.
			r.fetched(ctx, m.Digest)
			return Manifest{Manifest: m, Source: "cache"}, nil
		}
	}
	s.metrics.CacheRequests.WithLabelValues("manifest", "miss").Inc()

	// One refresh per client identity, as by digest: with forwarded
	// credentials the upstream's answer (a 401, a 404) is for these.
	key := "tag " + r.remote.Identity() + " " + tag + " " + strings.Join(accept, ",")
	v, err := s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		m, done, err := r.manifestFromOwner(ctx, tag, accept)
		if !done {
			// This replica owns the tag, or its owner is not answering.
			m, err = r.refreshTag(ctx, tag, accept, rec, haveRec)
		}
		if err == nil {
			// Learnt here, as by digest: the refresh may outlive every
			// client that waited for it, and what it cached must still be
			// admitted.
			r.fetched(ctx, m.Digest)
		}
		return m, err
	})
	if err != nil {
		return Manifest{}, err
	}
	return v.(Manifest), nil
}

func (r *Repository) refreshTag(ctx context.Context, tag string, accept []string, rec cache.TagRecord, haveRec bool) (Manifest, error) {
	s, remote := r.s, r.remote
	var cached cache.Manifest
	if haveRec {
		var err error
		if cached, err = s.store.GetManifest(ctx, r.remote.Upstream(), r.remote.Name(), rec.Digest); err != nil {
			haveRec = false
		}
	}
	stale := func(cause error) (Manifest, error) {
		s.metrics.StaleServes.WithLabelValues(remote.Upstream()).Inc()
		s.log.Warn("upstream unavailable, serving stale tag", "upstream", remote.Upstream(), "repo", remote.Name(), "tag", tag,
			"digest", rec.Digest, "checked_at", rec.CheckedAt, "error", cause)
		return Manifest{Manifest: cached, Source: "cache", Stale: true}, nil
	}
	if haveRec {
		dgst, err := remote.HeadManifest(ctx, tag, accept)
		switch {
		case err != nil && upstream.Unavailable(err):
			return stale(err)
		case err != nil:
			return Manifest{}, err
		case dgst == rec.Digest:
			rec.CheckedAt = s.clock.Now()
			if err := s.store.PutTag(ctx, remote.Upstream(), remote.Name(), tag, rec); err != nil {
				s.log.Error("caching tag failed", "repo", remote.Name(), "tag", tag, "error", err)
			}
			return Manifest{Manifest: cached, Source: "cache"}, nil
		}
		// The tag moved: fetch what it points to now.
	}
	m, err := fetchManifest(ctx, remote, tag, accept, "")
	if err != nil {
		if haveRec && upstream.Unavailable(err) {
			return stale(err)
		}
		return Manifest{}, err
	}
	if err := s.store.PutManifest(ctx, r.remote.Upstream(), r.remote.Name(), m); err != nil {
		s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		return Manifest{Manifest: m, Source: "upstream"}, nil
	}
	rec = cache.TagRecord{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(m.Content)), CheckedAt: s.clock.Now()}
	if err := s.store.PutTag(ctx, remote.Upstream(), remote.Name(), tag, rec); err != nil {
		s.log.Error("caching tag failed", "repo", remote.Name(), "tag", tag, "error", err)
	}
	return Manifest{Manifest: m, Source: "upstream"}, nil
}

// fetchManifest is ref from remote, verified (upstream.Repository.GetManifest),
// as the cache keeps it.
func fetchManifest(ctx context.Context, remote *upstream.Repository, ref string, accept []string, want digest.Digest) (cache.Manifest, error) {
	m, err := remote.GetManifest(ctx, ref, accept, want)
	if err != nil {
		return cache.Manifest{}, err
	}
	return cache.Manifest{MediaType: m.MediaType, Digest: m.Digest, Content: m.Content}, nil
}

// accepts reports whether a client that sent accept can take mediaType. A
// schema 1 original suits every client: containerd 1.x converts it itself,
// and the clients that cannot (2.x) get the variant the schema 1 rule made.
func accepts(accept []string, mediaType string) bool {
	if len(accept) == 0 || schema1.Is(mediaType) {
		return true
	}
	for _, a := range accept {
		if a == mediaType || a == "*/*" {
			return true
		}
	}
	return false
}
