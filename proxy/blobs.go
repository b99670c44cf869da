package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
)

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.upstream.name), slog.String("repo", req.repo), slog.String("ref", req.ref()))

	if err := s.confirmAccess(ctx, req); err != nil {
		return err
	}
	if served, err := s.serveCachedBlob(w, r, req.digest); served || err != nil {
		return err
	}
	// A repackaged layer exists only here: if it was evicted, rebuild it.
	if d, err := s.store.GetDerived(ctx, req.digest); err == nil && d.Kind == cache.DerivedLayer {
		if err := s.rebuildLayer(ctx, d); err != nil {
			return err
		}
		if served, err := s.serveCachedBlob(w, r, req.digest); served || err != nil {
			return err
		}
	}
	if r.Method == http.MethodHead {
		return s.headBlobUpstream(w, r, req)
	}

	f := s.fetches.join(req.upstream, req.repo, req.digest)
	defer f.release()
	if err := f.waitReady(ctx); err != nil {
		return err
	}
	if f.cached || f.size < 0 {
		// Nothing to tail: read the verified blob from the cache.
		if err := f.waitDone(ctx); err != nil {
			return err
		}
		if served, err := s.serveCachedBlob(w, r, req.digest); served || err != nil {
			return err
		}
		return newError(http.StatusBadGateway, CodeBlobUnknown, "blob vanished from the cache", nil)
	}
	sr := &spoolReader{ctx: ctx, f: f}
	s.sendBlob(w, r, req.digest, sr, "upstream")
	return sr.err
}

// serveCachedBlob serves dgst if the cache has it. A cache that fails to
// answer is logged and treated as a miss: upstream can still serve.
func (s *Server) serveCachedBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest) (bool, error) {
	unpin := s.store.Pin(dgst) // not evicted while it is served
	defer unpin()
	rc, _, err := s.store.OpenBlob(r.Context(), dgst)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
		}
		s.metrics.cacheRequests.WithLabelValues("blob", "miss").Inc()
		return false, nil
	}
	defer rc.Close()
	s.metrics.cacheRequests.WithLabelValues("blob", "hit").Inc()
	s.sendBlob(w, r, dgst, rc, "cache")
	return true, nil
}

// sendBlob answers GET and HEAD, with ranges and conditional requests, from
// content that seeks.
func (s *Server) sendBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, content io.ReadSeeker, source string) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	rw := w.(*responseWriter)
	before := rw.written
	http.ServeContent(w, r, "", time.Time{}, content)
	s.metrics.servedBytes.WithLabelValues(source).Add(float64(rw.written - before))
	logAttrs(r.Context(), slog.String("source", source))
}

// headBlobUpstream answers a HEAD for an uncached blob without downloading it.
func (s *Server) headBlobUpstream(w http.ResponseWriter, r *http.Request, req distRequest) error {
	resp, err := req.upstream.do(r.Context(), http.MethodHead, req.repo, "/v2/"+req.repo+"/blobs/"+req.digest.String(), nil, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return req.upstream.statusError(resp, CodeBlobUnknown)
	}
	resp.Body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", req.digest.String())
	h.Set("ETag", `"`+req.digest.String()+`"`)
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	logAttrs(r.Context(), slog.String("source", "upstream"))
	return nil
}
