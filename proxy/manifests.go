package proxy

import (
	"context"
	"errors"
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
// clients may be waiting on. It runs apart from each client's cancellation
// (one leaving does not fail the others), and ends manifestFetchGrace after
// the last has left (flight.Group): a fetch nobody waits for lets go of its
// memory and its upstream connection.
const manifestFetchTimeout = 2 * time.Minute

// manifestFetchGrace is how long a manifest fetch nobody waits for goes
// on: long enough for a client that retries, or the next request of one
// that ran out of its budget, to find it, as a download's orphan grace.
const manifestFetchGrace = 10 * time.Second

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.remote.Upstream()), slog.String("repo", req.repo), slog.String("ref", req.ref()))
	accept := parseAccept(r.Header.Values("Accept"))
	client := s.rules.ForUserAgent(r.UserAgent())

	var m cache.Manifest
	var source string
	if req.tag != "" {
		if err := s.admitTag(ctx, req); err != nil {
			return err
		}
		if m, source, err = s.manifestByTag(ctx, req, accept); err != nil {
			return err
		}
		s.fleet.sawPull(r, false)
		n, err := s.normalizeWithin(ctx, req, m, client.Rules, s.deadlineFor(r.UserAgent()))
		if err != nil {
			return err
		}
		if n.Changed() {
			s.metrics.normalizedServed.Inc()
			s.reports.Add(s.served(req, m, client, n.Verdict))
			logAttrs(ctx, slog.Bool("rewrite", true), slog.String("original", m.Digest.String()))
		} else if client.Rules != s.rules.Enabled {
			// The original may be another client's to fix: the report says
			// who got it as it is, looked up beside the answer.
			s.noteOriginalServed(ctx, req, m, client)
		}
		m = n.Manifest
	} else {
		if m, source, err = s.manifestByDigest(ctx, req, accept); err != nil {
			return err
		}
		s.fleet.sawPull(r, s.noteDigestPull(ctx, req, m, client))
	}
	logAttrs(ctx, slog.String("source", source), slog.String("digest", m.Digest.String()))

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
		s.metrics.servedBytes.WithLabelValues(source).Add(float64(n))
	}
	return nil
}

// manifestByDigest returns the manifest req names for req's client: from
// the cache once the client is admitted (access.go), else from the upstream,
// as the client, whose answer admits it.
func (s *Server) manifestByDigest(ctx context.Context, req distRequest, accept []string) (cache.Manifest, string, error) {
	admitted, sub, err := s.admitted(ctx, req)
	if err != nil {
		return cache.Manifest{}, "", errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	m, err := s.store.GetManifest(ctx, req.digest)
	if err == nil {
		if !admitted {
			if err := s.ask(ctx, req, sub); err != nil {
				return cache.Manifest{}, "", err
			}
		}
		s.metrics.cacheRequests.WithLabelValues("manifest", "hit").Inc()
		return m, "cache", nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		s.log.Warn("cache read failed, trying upstream", "digest", req.digest, "error", err)
	}
	s.metrics.cacheRequests.WithLabelValues("manifest", "miss").Inc()
	if d, err := s.store.GetDerived(ctx, req.digest); err == nil && d.Kind == cache.DerivedManifest {
		// Made here, and lost: upstream never had it.
		return cache.Manifest{}, "", errcode.New(http.StatusNotFound, errcode.ManifestUnknown, "manifest unknown; pull by tag to make it again", nil)
	}
	// One fetch per client identity: the upstream's answer is for these
	// credentials.
	key := "digest " + req.remote.Identity() + " " + req.digest.String()
	v, err := s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		m, err := fetchManifest(ctx, req.remote, req.digest.String(), accept, req.digest)
		if err != nil {
			return nil, err
		}
		if err := s.store.PutManifest(ctx, m); err != nil {
			s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		}
		// Learnt here, not by the callers: the fetch may outlive them all
		// (its grace), and what it cached must still be admitted.
		s.learn(ctx, req.remote.Upstream(), req.repo, req.digest)
		req.remote.Confirm(s.clock.Now())
		return m, nil
	})
	if err != nil {
		return cache.Manifest{}, "", err
	}
	return v.(cache.Manifest), "upstream", nil
}

// manifestByTag answers from a fresh tag record, else asks upstream: a HEAD
// to revalidate what is cached, a GET for what is not. When upstream cannot
// answer, a stale record is better than a failed pull.
func (s *Server) manifestByTag(ctx context.Context, req distRequest, accept []string) (cache.Manifest, string, error) {
	rec, err := s.store.GetTag(ctx, req.remote.Upstream(), req.repo, req.tag)
	haveRec := err == nil && accepts(accept, rec.MediaType)
	if haveRec && s.clock.Now().Sub(rec.CheckedAt) < s.tagTTL {
		if m, err := s.store.GetManifest(ctx, rec.Digest); err == nil {
			s.metrics.cacheRequests.WithLabelValues("manifest", "hit").Inc()
			// The tag record is the repository's own: upstream said so.
			s.learn(ctx, req.remote.Upstream(), req.repo, m.Digest)
			return m, "cache", nil
		}
	}
	s.metrics.cacheRequests.WithLabelValues("manifest", "miss").Inc()

	type result struct {
		m      cache.Manifest
		source string
	}
	// One refresh per client identity, as by digest: with forwarded
	// credentials the upstream's answer (a 401, a 404) is for these.
	key := "tag " + req.remote.Identity() + " " + req.tag + " " + strings.Join(accept, ",")
	v, err := s.manifests.Do(ctx, key, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, manifestFetchTimeout)
		defer cancel()
		m, source, err := s.refreshTag(ctx, req, accept, rec, haveRec)
		return result{m, source}, err
	})
	if err != nil {
		return cache.Manifest{}, "", err
	}
	res := v.(result)
	s.learn(ctx, req.remote.Upstream(), req.repo, res.m.Digest)
	return res.m, res.source, nil
}

func (s *Server) refreshTag(ctx context.Context, req distRequest, accept []string, rec cache.TagRecord, haveRec bool) (cache.Manifest, string, error) {
	remote := req.remote
	var cached cache.Manifest
	if haveRec {
		var err error
		if cached, err = s.store.GetManifest(ctx, rec.Digest); err != nil {
			haveRec = false
		}
	}
	stale := func(cause error) (cache.Manifest, string, error) {
		s.metrics.staleServes.WithLabelValues(remote.Upstream()).Inc()
		s.log.Warn("upstream unavailable, serving stale tag", "upstream", remote.Upstream(), "repo", req.repo, "tag", req.tag,
			"digest", rec.Digest, "checked_at", rec.CheckedAt, "error", cause)
		logAttrs(ctx, slog.Bool("stale", true))
		return cached, "cache", nil
	}
	if haveRec {
		dgst, err := remote.HeadManifest(ctx, req.tag, accept)
		switch {
		case err != nil && upstream.Unavailable(err):
			return stale(err)
		case err != nil:
			return cache.Manifest{}, "", err
		case dgst == rec.Digest:
			rec.CheckedAt = s.clock.Now()
			if err := s.store.PutTag(ctx, remote.Upstream(), req.repo, req.tag, rec); err != nil {
				s.log.Error("caching tag failed", "repo", req.repo, "tag", req.tag, "error", err)
			}
			return cached, "cache", nil
		}
		// The tag moved: fetch what it points to now.
	}
	m, err := fetchManifest(ctx, remote, req.tag, accept, "")
	if err != nil {
		if haveRec && upstream.Unavailable(err) {
			return stale(err)
		}
		return cache.Manifest{}, "", err
	}
	if err := s.store.PutManifest(ctx, m); err != nil {
		s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		return m, "upstream", nil
	}
	rec = cache.TagRecord{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(m.Content)), CheckedAt: s.clock.Now()}
	if err := s.store.PutTag(ctx, remote.Upstream(), req.repo, req.tag, rec); err != nil {
		s.log.Error("caching tag failed", "repo", req.repo, "tag", req.tag, "error", err)
	}
	return m, "upstream", nil
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
