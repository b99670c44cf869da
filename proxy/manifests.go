package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// manifestFetchTimeout bounds one upstream manifest request, which many
// clients may be waiting on.
const manifestFetchTimeout = 2 * time.Minute

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.repo.Upstream()), slog.String("repo", req.repo.Name()), slog.String("ref", req.ref()))
	accept := parseAccept(r.Header.Values("Accept"))
	client := s.rules.ForUserAgent(r.UserAgent())

	orig, err := req.repo.manifest(ctx, req.ref(), accept)
	if err != nil {
		return err
	}
	if orig.stale {
		logAttrs(ctx, slog.Bool("stale", true))
	}
	m := orig.Manifest
	if req.tag != "" {
		s.fleet.sawPull(r, false)
		n, err := req.repo.variant(ctx, orig.Manifest, client.Rules, s.deadlineFor(r.UserAgent()))
		if err != nil {
			return err
		}
		if n.Changed() {
			s.metrics.normalizedServed.Inc()
			s.reports.Add(s.served(req, orig.Manifest, client, n.Verdict))
			logAttrs(ctx, slog.Bool("rewrite", true), slog.String("original", orig.Digest.String()))
		} else if client.Rules != s.rules.Enabled {
			// The original may be another client's to fix: the report says
			// who got it as it is, looked up beside the answer.
			s.noteOriginalServed(ctx, req, orig.Manifest, client)
		}
		m = n.Manifest
	} else {
		s.fleet.sawPull(r, s.noteDigestPull(ctx, req, orig.Manifest, client))
	}
	logAttrs(ctx, slog.String("source", orig.source), slog.String("digest", m.Digest.String()))

	etag := `"` + m.Digest.String() + `"`
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("ETag", etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Length", strconv.Itoa(len(m.Content)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		n, _ := w.Write(m.Content)
		s.metrics.servedBytes.WithLabelValues(orig.source).Add(float64(n))
	}
	return nil
}

// manifest is the manifest ref names (a tag or a digest) for the client, as
// the upstream has it: admitted (access.go), from the cache or the upstream.
// A tag's record is revalidated once it is older than the tag TTL, and
// served stale when the upstream cannot answer. accept is the media types
// the client takes; none, any.
func (r *repository) manifest(ctx context.Context, ref string, accept []string) (manifestAnswer, error) {
	if strings.Contains(ref, ":") {
		dgst, err := digest.Parse(ref)
		if err != nil {
			return manifestAnswer{}, errcode.New(http.StatusBadRequest, errcode.DigestInvalid, "invalid digest "+ref, err)
		}
		return r.manifestByDigest(ctx, dgst, accept)
	}
	if !anchoredTag.MatchString(ref) {
		return manifestAnswer{}, errcode.New(http.StatusBadRequest, errcode.TagInvalid, fmt.Sprintf("%q is not a tag", ref), nil)
	}
	if err := r.admitTag(ctx, ref); err != nil {
		return manifestAnswer{}, err
	}
	return r.manifestByTag(ctx, ref, accept)
}

// manifestByDigest returns the manifest dgst names for the client: from
// the cache once the client is admitted (access.go), else from the upstream,
// as the client, whose answer admits it.
func (r *repository) manifestByDigest(ctx context.Context, dgst digest.Digest, accept []string) (manifestAnswer, error) {
	s := r.s
	o := object{dgst: dgst}
	admitted, sub, err := r.admitted(ctx, o)
	if err != nil {
		return manifestAnswer{}, errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	m, err := s.store.GetManifest(ctx, dgst)
	if err == nil {
		if !admitted {
			if err := r.ask(ctx, o, sub); err != nil {
				return manifestAnswer{}, err
			}
		}
		s.metrics.cacheRequests.WithLabelValues("manifest", "hit").Inc()
		return manifestAnswer{Manifest: m, source: "cache"}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
	}
	s.metrics.cacheRequests.WithLabelValues("manifest", "miss").Inc()
	if d, err := s.store.GetDerived(ctx, dgst); err == nil && d.Kind == cache.DerivedManifest {
		// Made here, and lost: upstream never had it.
		return manifestAnswer{}, errcode.New(http.StatusNotFound, errcode.ManifestUnknown, "manifest unknown; pull by tag to make it again", nil)
	}
	// One fetch per client identity: the upstream's answer is for these
	// credentials.
	key := "digest " + r.remote.Identity() + " " + dgst.String()
	v, err, _ := s.manifests.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFetchTimeout)
		defer cancel()
		m, err := fetchManifest(ctx, r.remote, dgst.String(), accept, dgst)
		if err != nil {
			return nil, err
		}
		if err := s.store.PutManifest(ctx, m); err != nil {
			s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		}
		return m, nil
	})
	if err != nil {
		return manifestAnswer{}, err
	}
	r.learn(ctx, dgst)
	r.remote.Confirm(s.clock.Now())
	return manifestAnswer{Manifest: v.(cache.Manifest), source: "upstream"}, nil
}

// manifestByTag answers from a fresh tag record, else asks upstream: a HEAD
// to revalidate what is cached, a GET for what is not. When upstream cannot
// answer, a stale record is better than a failed pull.
func (r *repository) manifestByTag(ctx context.Context, tag string, accept []string) (manifestAnswer, error) {
	s := r.s
	rec, err := s.store.GetTag(ctx, r.remote.Upstream(), r.remote.Name(), tag)
	haveRec := err == nil && accepts(accept, rec.MediaType)
	if haveRec && s.clock.Now().Sub(rec.CheckedAt) < s.tagTTL {
		if m, err := s.store.GetManifest(ctx, rec.Digest); err == nil {
			s.metrics.cacheRequests.WithLabelValues("manifest", "hit").Inc()
			// The tag record is the repository's own: upstream said so.
			r.learn(ctx, m.Digest)
			return manifestAnswer{Manifest: m, source: "cache"}, nil
		}
	}
	s.metrics.cacheRequests.WithLabelValues("manifest", "miss").Inc()

	key := "tag " + r.remote.Upstream() + "/" + r.remote.Name() + ":" + tag + " " + strings.Join(accept, ",")
	v, err, _ := s.manifests.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFetchTimeout)
		defer cancel()
		return r.refreshTag(ctx, tag, accept, rec, haveRec)
	})
	if err != nil {
		return manifestAnswer{}, err
	}
	m := v.(manifestAnswer)
	r.learn(ctx, m.Digest)
	return m, nil
}

func (r *repository) refreshTag(ctx context.Context, tag string, accept []string, rec cache.TagRecord, haveRec bool) (manifestAnswer, error) {
	s, remote := r.s, r.remote
	var cached cache.Manifest
	if haveRec {
		var err error
		if cached, err = s.store.GetManifest(ctx, rec.Digest); err != nil {
			haveRec = false
		}
	}
	stale := func(cause error) (manifestAnswer, error) {
		s.metrics.staleServes.WithLabelValues(remote.Upstream()).Inc()
		s.log.Warn("upstream unavailable, serving stale tag", "upstream", remote.Upstream(), "repo", remote.Name(), "tag", tag,
			"digest", rec.Digest, "checked_at", rec.CheckedAt, "error", cause)
		return manifestAnswer{Manifest: cached, source: "cache", stale: true}, nil
	}
	if haveRec {
		dgst, err := remote.HeadManifest(ctx, tag, accept)
		switch {
		case err != nil && upstream.Unavailable(err):
			return stale(err)
		case err != nil:
			return manifestAnswer{}, err
		case dgst == rec.Digest:
			rec.CheckedAt = s.clock.Now()
			if err := s.store.PutTag(ctx, remote.Upstream(), remote.Name(), tag, rec); err != nil {
				s.log.Error("caching tag failed", "repo", remote.Name(), "tag", tag, "error", err)
			}
			return manifestAnswer{Manifest: cached, source: "cache"}, nil
		}
		// The tag moved: fetch what it points to now.
	}
	m, err := fetchManifest(ctx, remote, tag, accept, "")
	if err != nil {
		if haveRec && upstream.Unavailable(err) {
			return stale(err)
		}
		return manifestAnswer{}, err
	}
	if err := s.store.PutManifest(ctx, m); err != nil {
		s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		return manifestAnswer{Manifest: m, source: "upstream"}, nil
	}
	rec = cache.TagRecord{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(m.Content)), CheckedAt: s.clock.Now()}
	if err := s.store.PutTag(ctx, remote.Upstream(), remote.Name(), tag, rec); err != nil {
		s.log.Error("caching tag failed", "repo", remote.Name(), "tag", tag, "error", err)
	}
	return manifestAnswer{Manifest: m, source: "upstream"}, nil
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

// parseAccept flattens Accept headers into media types, dropping parameters
// and the schema 1 types: upstream is always asked for schema 1 last (see
// upstream.Repository.GetManifest), and a schema 1 original suits every
// client (see accepts).
func parseAccept(values []string) []string {
	var out []string
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if mt == "" || strings.HasPrefix(mt, "application/vnd.docker.distribution.manifest.v1") {
				continue
			}
			out = append(out, mt)
		}
	}
	return out
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
