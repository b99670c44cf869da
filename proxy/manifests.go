package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// serveManifest answers a manifest by tag or digest: the repository's
// answer (mirror.Repository.Manifest), and by tag the client's variant of
// it (Variant, within the client's deadline).
func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.repo.Upstream()), slog.String("repo", req.repo.Name()), slog.String("ref", req.ref()))
	accept := parseAccept(r.Header.Values("Accept"))
	client := s.rules.ForUserAgent(r.UserAgent())

	orig, err := req.repo.Manifest(ctx, req.ref(), accept)
	if err != nil {
		return err
	}
	if orig.Stale {
		logAttrs(ctx, slog.Bool("stale", true))
	}
	m := orig.Manifest
	if req.tag != "" {
		s.fleet.SawPull(r, false)
		n, err := req.repo.Variant(ctx, orig.Manifest, client.Rules, s.deadlineFor(r.UserAgent()))
		if err != nil {
			return err
		}
		if n.Changed() {
			s.metrics.normalizedServed.Inc()
			s.reports.Served(answer(req, orig.Manifest, client), n.Verdict)
			logAttrs(ctx, slog.Bool("rewrite", true), slog.String("original", orig.Digest.String()))
		} else if client.Rules != s.rules.Enabled {
			// The original may be another client's to fix: the report says
			// who got it as it is, looked up beside the answer.
			s.reports.ServedOriginal(ctx, answer(req, orig.Manifest, client), s.rules.Enabled, s.mirror.Verdict)
		}
		// Upgrade readiness lists it, whoever it is clean for.
		s.reports.Pulled(answer(req, orig.Manifest, client), s.rules.Enabled)
		m = n.Manifest
		if s.premade != nil {
			// The fleet's other versions will ask for this tag too.
			s.premade.Offer(req.repo, orig.Manifest, client.Rules)
		}
	} else {
		s.fleet.SawPull(r, s.noteDigestPull(ctx, req, orig.Manifest, client))
	}
	logAttrs(ctx, slog.String("source", orig.Source), slog.String("digest", m.Digest.String()))

	etag := `"` + m.Digest.String() + `"`
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("ETag", etag)
	if orig.Stale {
		// The tag's record is past its TTL and the upstream could not be
		// asked (down, or rate limited): said as HTTP caches say it.
		h.Set("Warning", `110 - "Response is Stale"`)
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.Contains(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Length", strconv.Itoa(len(m.Content)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		n, _ := w.Write(m.Content)
		s.metrics.servedBytes.WithLabelValues(orig.Source).Add(float64(n))
	}
	return nil
}

// parseAccept flattens Accept headers into media types, dropping parameters
// and the schema 1 types: upstream is always asked for schema 1 last (see
// upstream.Repository.GetManifest), and a schema 1 original suits every
// client (the repository takes one whatever the client accepts).
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

// serveReferrers answers the referrers API (OCI distribution spec 1.1):
// the repository's list of the manifests that name the digest as their
// subject (mirror.Repository.Referrers), as an OCI index encoded here,
// never the upstream's bytes, filtered by artifactType when asked.
func (s *Server) serveReferrers(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.repo.Upstream()), slog.String("repo", req.repo.Name()), slog.String("ref", req.ref()))
	list, err := req.repo.Referrers(ctx, req.digest, r.URL.Query().Get("artifactType"))
	if err != nil {
		return err
	}
	logAttrs(ctx, slog.String("source", list.Source), slog.Int("referrers", len(list.Manifests)))
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	// Annotations as the upstream wrote them, not grown sixfold by HTML
	// escapes.
	enc.SetEscapeHTML(false)
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: list.Manifests}
	if err := enc.Encode(index); err != nil {
		return fmt.Errorf("encode referrers: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", ocispec.MediaTypeImageIndex)
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	if list.Filtered {
		h.Set("OCI-Filters-Applied", "artifactType")
	}
	if list.Stale {
		logAttrs(ctx, slog.Bool("stale", true))
		h.Set("Warning", `110 - "Response is Stale"`)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body.Bytes())
	}
	return nil
}
