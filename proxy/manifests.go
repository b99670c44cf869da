package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// defaultAccept is what upstream is asked for when the client names nothing
// usable: every manifest type containerd understands.
var defaultAccept = []string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, mediatype.DockerManifestList, mediatype.DockerManifest}

// manifestFetchTimeout bounds one upstream manifest request, which many
// clients may be waiting on.
const manifestFetchTimeout = 2 * time.Minute

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.upstream.Name()), slog.String("repo", req.repo), slog.String("ref", req.ref()))
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
	key := fmt.Sprintf("digest %s/%s@%s %x", req.upstream.Name(), req.repo, req.digest, req.upstream.Identity())
	v, err, _ := s.manifests.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFetchTimeout)
		defer cancel()
		m, err := s.fetchManifest(ctx, req.upstream, req.repo, req.digest.String(), accept, req.digest)
		if err != nil {
			return nil, err
		}
		if err := s.store.PutManifest(ctx, m); err != nil {
			s.log.Error("caching manifest failed", "digest", m.Digest, "error", err)
		}
		return m, nil
	})
	if err != nil {
		return cache.Manifest{}, "", err
	}
	s.learn(ctx, req.upstream.Name(), req.repo, req.digest)
	req.upstream.Confirm(req.repo, s.clock.Now())
	return v.(cache.Manifest), "upstream", nil
}

// manifestByTag answers from a fresh tag record, else asks upstream: a HEAD
// to revalidate what is cached, a GET for what is not. When upstream cannot
// answer, a stale record is better than a failed pull.
func (s *Server) manifestByTag(ctx context.Context, req distRequest, accept []string) (cache.Manifest, string, error) {
	rec, err := s.store.GetTag(ctx, req.upstream.Name(), req.repo, req.tag)
	haveRec := err == nil && accepts(accept, rec.MediaType)
	if haveRec && s.clock.Now().Sub(rec.CheckedAt) < s.tagTTL {
		if m, err := s.store.GetManifest(ctx, rec.Digest); err == nil {
			s.metrics.cacheRequests.WithLabelValues("manifest", "hit").Inc()
			// The tag record is the repository's own: upstream said so.
			s.learn(ctx, req.upstream.Name(), req.repo, m.Digest)
			return m, "cache", nil
		}
	}
	s.metrics.cacheRequests.WithLabelValues("manifest", "miss").Inc()

	type result struct {
		m      cache.Manifest
		source string
	}
	key := "tag " + req.upstream.Name() + "/" + req.repo + ":" + req.tag + " " + strings.Join(accept, ",")
	v, err, _ := s.manifests.Do(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFetchTimeout)
		defer cancel()
		m, source, err := s.refreshTag(ctx, req, accept, rec, haveRec)
		return result{m, source}, err
	})
	if err != nil {
		return cache.Manifest{}, "", err
	}
	res := v.(result)
	s.learn(ctx, req.upstream.Name(), req.repo, res.m.Digest)
	return res.m, res.source, nil
}

func (s *Server) refreshTag(ctx context.Context, req distRequest, accept []string, rec cache.TagRecord, haveRec bool) (cache.Manifest, string, error) {
	up := req.upstream
	var cached cache.Manifest
	if haveRec {
		var err error
		if cached, err = s.store.GetManifest(ctx, rec.Digest); err != nil {
			haveRec = false
		}
	}
	stale := func(cause error) (cache.Manifest, string, error) {
		s.metrics.staleServes.WithLabelValues(up.Name()).Inc()
		s.log.Warn("upstream unavailable, serving stale tag", "upstream", up.Name(), "repo", req.repo, "tag", req.tag,
			"digest", rec.Digest, "checked_at", rec.CheckedAt, "error", cause)
		logAttrs(ctx, slog.Bool("stale", true))
		return cached, "cache", nil
	}
	if haveRec {
		dgst, err := s.headManifest(ctx, up, req.repo, req.tag, accept)
		switch {
		case err != nil && upstream.Unavailable(err):
			return stale(err)
		case err != nil:
			return cache.Manifest{}, "", err
		case dgst == rec.Digest:
			rec.CheckedAt = s.clock.Now()
			if err := s.store.PutTag(ctx, up.Name(), req.repo, req.tag, rec); err != nil {
				s.log.Error("caching tag failed", "repo", req.repo, "tag", req.tag, "error", err)
			}
			return cached, "cache", nil
		}
		// The tag moved: fetch what it points to now.
	}
	m, err := s.fetchManifest(ctx, up, req.repo, req.tag, accept, "")
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
	if err := s.store.PutTag(ctx, up.Name(), req.repo, req.tag, rec); err != nil {
		s.log.Error("caching tag failed", "repo", req.repo, "tag", req.tag, "error", err)
	}
	return m, "upstream", nil
}

// headManifest asks upstream which digest a tag points to. An empty digest
// means upstream did not say.
func (s *Server) headManifest(ctx context.Context, up *upstream.Registry, repo, tag string, accept []string) (digest.Digest, error) {
	resp, err := up.Do(ctx, http.MethodHead, repo, "/v2/"+repo+"/manifests/"+tag, nil, acceptHeader(accept))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", up.StatusError(resp, errcode.ManifestUnknown)
	}
	resp.Body.Close()
	dgst, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", nil
	}
	return dgst, nil
}

// fetchManifest GETs a manifest and verifies it: against want when the
// request was by digest, else against the upstream's Docker-Content-Digest
// when it sends one.
func (s *Server) fetchManifest(ctx context.Context, up *upstream.Registry, repo, ref string, accept []string, want digest.Digest) (cache.Manifest, error) {
	resp, err := up.Do(ctx, http.MethodGet, repo, "/v2/"+repo+"/manifests/"+ref, nil, acceptHeader(accept))
	if err != nil {
		return cache.Manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return cache.Manifest{}, up.StatusError(resp, errcode.ManifestUnknown)
	}
	defer resp.Body.Close()
	tooLarge := errcode.New(http.StatusBadGateway, errcode.ManifestInvalid, fmt.Sprintf("upstream manifest is larger than %d bytes", maxManifestSize), nil)
	if resp.ContentLength > maxManifestSize {
		return cache.Manifest{}, tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return cache.Manifest{}, errcode.New(http.StatusBadGateway, errcode.Unavailable, "reading manifest from upstream "+up.Name()+" failed", err)
	}
	if len(body) > maxManifestSize {
		return cache.Manifest{}, tooLarge
	}

	// The type is the content's (mediatype.Of): the cache is shared by
	// digest, and another upstream's copy of these bytes must be served as
	// they are, whatever this one calls them. A Content-Type that says
	// otherwise, or is not a manifest's at all, is an upstream answering
	// wrong: nothing of it is cached or served.
	mediaType, err := mediatype.FromUpstream(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return cache.Manifest{}, errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
			fmt.Sprintf("upstream %s answered with a document that is not a manifest regnorm serves", up.Name()), err)
	}
	// A schema 1 manifest is known by the digest of its payload (without
	// its signatures); every other by the digest of its bytes.
	claimed := want
	if claimed == "" {
		if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && h.Algorithm().Available() {
			claimed = h
		}
	}
	alg := digest.Canonical
	if claimed != "" {
		alg = claimed.Algorithm()
	}
	got, err := schema1.ManifestDigest(alg, mediaType, body)
	if err != nil || (claimed != "" && got != claimed) {
		return cache.Manifest{}, errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
			fmt.Sprintf("upstream %s sent a manifest that hashes to %s, not %s", up.Name(), got, claimed), err)
	}
	return cache.Manifest{MediaType: mediaType, Digest: got, Content: body}, nil
}

// parseAccept flattens Accept headers into media types, dropping parameters
// and the schema 1 types: upstream is always asked for schema 1 last (see
// acceptHeader), and a schema 1 original suits every client (see accepts).
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

// acceptHeader is the Accept header upstream is asked with: the client's
// types, then those of the modern four it lacks, then schema 1. So a tag
// that exists only as schema 1 is found, and one that exists as anything
// newer is never converted down for one client's narrow list (distribution
// v2 and Quay convert to schema 1 when the list lacks the stored type) and
// then cached as the tag for every client.
func acceptHeader(accept []string) http.Header {
	all := slices.Clone(accept)
	for _, mt := range defaultAccept {
		if !slices.Contains(all, mt) {
			all = append(all, mt)
		}
	}
	all = append(all, schema1.MediaTypeSigned, schema1.MediaTypeUnsigned)
	return http.Header{"Accept": {strings.Join(all, ", ")}}
}
