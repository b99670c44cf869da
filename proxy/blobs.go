package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
)

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logAttrs(ctx, slog.String("upstream", req.repo.Upstream()), slog.String("repo", req.repo.Name()), slog.String("ref", req.ref()))
	if r.Method == http.MethodHead {
		return s.headBlob(w, r, req)
	}
	b, err := req.repo.OpenBlob(ctx, req.digest, rangeStart(r.Header.Get("Range")))
	if err != nil {
		return err
	}
	defer b.Close()
	result := "hit"
	if b.Fetched {
		result = "miss"
	}
	s.metrics.cacheRequests.WithLabelValues("blob", result).Inc()
	s.sendBlob(w, r, req.digest, b, b.Source, b.MediaType)
	return b.Err()
}

// headBlob answers a HEAD as a GET would, without sending the blob (see
// mirror.Repository.StatBlob for what it reads).
func (s *Server) headBlob(w http.ResponseWriter, r *http.Request, req distRequest) error {
	info, err := req.repo.StatBlob(r.Context(), req.digest)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", info.MediaType)
	h.Set("Docker-Content-Digest", req.digest.String())
	h.Set("ETag", `"`+req.digest.String()+`"`)
	if info.Size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	}
	w.WriteHeader(http.StatusOK)
	logAttrs(r.Context(), slog.String("source", info.Source))
	return nil
}

// rangeStart is where a single-range request starts ("bytes=N-" or
// "bytes=N-M"), so the cache can open the blob there at once; 0 for
// anything else, which net/http then answers by seeking.
func rangeStart(h string) int64 {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0
	}
	start, _, _ := strings.Cut(spec, "-")
	n, err := strconv.ParseInt(strings.TrimSpace(start), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// sendBlob answers a GET (and net/http's HEAD), with ranges and conditional requests, from
// content that seeks, sent as mediaType: a manifest's own type (a manifest
// asked for through /blobs/, as containerd's resolver does when /manifests/
// failed), else application/octet-stream.
func (s *Server) sendBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, content io.ReadSeeker, source, mediaType string) {
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	rw := w.(*responseWriter)
	before := rw.written
	http.ServeContent(w, r, "", time.Time{}, content)
	s.metrics.servedBytes.WithLabelValues(source).Add(float64(rw.written - before))
	logAttrs(r.Context(), slog.String("source", source))
}
