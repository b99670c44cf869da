package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
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
	b, err := req.repo.openBlob(ctx, req.digest, rangeStart(r.Header.Get("Range")))
	if err != nil {
		return err
	}
	defer b.Close()
	result := "hit"
	if b.fetched {
		result = "miss"
	}
	s.metrics.cacheRequests.WithLabelValues("blob", result).Inc()
	s.sendBlob(w, r, req.digest, b, b.source)
	return b.err()
}

// headBlob answers a HEAD without reading the blob (see repository.statBlob).
func (s *Server) headBlob(w http.ResponseWriter, r *http.Request, req distRequest) error {
	info, err := req.repo.statBlob(r.Context(), req.digest)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", req.digest.String())
	h.Set("ETag", `"`+req.digest.String()+`"`)
	if info.size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(info.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	logAttrs(r.Context(), slog.String("source", info.source))
	return nil
}

// blobInfo is what a HEAD of a blob answers.
type blobInfo struct {
	size   int64  // -1 when the upstream did not say
	source string // "cache" or "upstream"
}

// statBlob is dgst's size, without reading the blob: from the cache for an
// admitted client, else the upstream's answer to the client. A repackaged
// layer that was evicted is rebuilt first: upstream never had it.
func (r *repository) statBlob(ctx context.Context, dgst digest.Digest) (blobInfo, error) {
	s := r.s
	info, err := s.store.StatBlob(ctx, dgst)
	if err != nil {
		if d, derr := s.store.GetDerived(ctx, dgst); derr != nil || d.Kind != cache.DerivedLayer {
			return r.statUpstream(ctx, dgst)
		}
		b, err := r.open(ctx, dgst, 0, false) // admits, and rebuilds
		if err != nil {
			return blobInfo{}, err
		}
		b.Close()
		if info, err = s.store.StatBlob(ctx, dgst); err != nil {
			return blobInfo{}, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "rebuilt blob vanished from the cache", err)
		}
	} else if err := r.admit(ctx, object{dgst: dgst, blob: true}); err != nil {
		return blobInfo{}, err
	}
	return blobInfo{size: info.Size, source: "cache"}, nil
}

// statUpstream is the upstream's answer to the client about an uncached
// blob, without downloading it.
func (r *repository) statUpstream(ctx context.Context, dgst digest.Digest) (blobInfo, error) {
	size, err := r.remote.HeadBlob(ctx, dgst)
	if err != nil {
		return blobInfo{}, err
	}
	if err := r.remote.CheckBlobSize(size); err != nil {
		return blobInfo{}, err // a GET would be refused: say so now
	}
	r.learn(ctx, dgst)
	r.remote.Confirm(r.s.clock.Now())
	return blobInfo{size: size, source: "upstream"}, nil
}

// openedBlob is a blob to read: from the cache, or from the spool of the
// download that is fetching it.
type openedBlob struct {
	io.ReadSeeker
	source  string // "cache" or "upstream"
	fetched bool   // not in the cache when asked for: downloaded or rebuilt
	close   func() error
}

func (b *openedBlob) Close() error { return b.close() }

// err is why a read from a download's spool ended early, which
// http.ServeContent does not say; nil for a cached blob.
func (b *openedBlob) err() error {
	if sr, ok := b.ReadSeeker.(*blobfetch.Reader); ok {
		return sr.Err()
	}
	return nil
}

// openBlob opens dgst for the client, from offset on.
func (r *repository) openBlob(ctx context.Context, dgst digest.Digest, offset int64) (*openedBlob, error) {
	return r.open(ctx, dgst, offset, false)
}

// open opens dgst for the client, from offset on: the one way to read a
// blob, for clients and rules alike.
//
// The client is admitted first (access.go): from what regnorm knows, else by
// asking the upstream as the client; a download it starts asks the upstream
// itself. Then the blob comes from the cache; a repackaged layer that was
// evicted is rebuilt, as the client; anything else is downloaded, or read
// from the download under way. verified asks for a read that checks the
// digest (for content a rule builds on): a cached blob is hashed as it is
// read, and a download's spool is verified by construction, since its last
// byte waits for the download's own check.
func (r *repository) open(ctx context.Context, dgst digest.Digest, offset int64, verified bool) (*openedBlob, error) {
	s := r.s
	o := object{dgst: dgst, blob: true}
	admitted, sub, err := r.admitted(ctx, o)
	if err != nil {
		return nil, errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	if !admitted && sub.dgst != dgst {
		// Made here: only the upstream can say whether its source is held.
		if err := r.ask(ctx, o, sub); err != nil {
			return nil, err
		}
		admitted = true
	}
	if !admitted {
		if _, err := s.store.StatBlob(ctx, dgst); err == nil {
			if err := r.ask(ctx, o, sub); err != nil {
				return nil, err
			}
			admitted = true
		}
	}
	if admitted {
		if b, err := s.openFromCache(ctx, dgst, offset, verified); b != nil || err != nil {
			return b, err
		}
		switch d, err := s.store.GetDerived(ctx, dgst); {
		case err == nil && d.Kind == cache.DerivedLayer:
			// A repackaged layer exists only here: it was evicted; rebuild it.
			if err := r.rebuildLayer(ctx, d); err != nil {
				return nil, err
			}
			if b, err := s.openFromCache(ctx, dgst, offset, verified); b != nil || err != nil {
				return fetched(b), err
			}
			return nil, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "rebuilt blob vanished from the cache", nil)
		case err == nil:
			return nil, errcode.New(http.StatusNotFound, errcode.BlobUnknown, "blob unknown", nil)
		}
	}

	// The download runs on its own context: the request pays for it here.
	if err := upstream.Spend(ctx); err != nil {
		return nil, err
	}
	f, err := s.fetches.Join(r.remote, dgst)
	if err != nil {
		return nil, err
	}
	if !admitted && !f.StartedBy(r.remote) {
		// Someone else's download: its answer is not this client's.
		if err := r.ask(ctx, o, sub); err != nil {
			f.Done()
			return nil, err
		}
		admitted = true
	}
	if f, err = s.fetches.Ready(ctx, f, r.remote); err != nil {
		return nil, err
	}
	if !admitted && !f.Answered() {
		// The download found the blob already cached (another one had just
		// published it) and asked nobody: ask for this client.
		if err := r.ask(ctx, o, sub); err != nil {
			f.Done()
			return nil, err
		}
	}
	sr, err := f.Tail(ctx)
	if err != nil {
		return nil, err
	}
	if sr != nil {
		return &openedBlob{ReadSeeker: sr, source: "upstream", fetched: true, close: sr.Close}, nil
	}
	// Nothing to tail: read the verified blob from the cache.
	if b, err := s.openFromCache(ctx, dgst, offset, verified); b != nil || err != nil {
		return fetched(b), err
	}
	return nil, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob vanished from the cache", nil)
}

func fetched(b *openedBlob) *openedBlob {
	if b != nil {
		b.fetched = true
	}
	return b
}

// openFromCache opens a cached blob; nil and no error when it is not
// there. A cache that fails to answer is logged and treated as a miss:
// upstream can still serve.
func (s *Server) openFromCache(ctx context.Context, dgst digest.Digest, offset int64, verified bool) (*openedBlob, error) {
	var rc io.ReadSeekCloser
	var err error
	if verified {
		var vr io.ReadCloser
		if vr, _, err = s.store.OpenVerified(ctx, dgst); err == nil {
			rc = forwardOnly{vr}
		}
	} else {
		rc, _, err = s.store.OpenBlob(ctx, dgst, offset)
	}
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
		}
		return nil, nil
	}
	return &openedBlob{ReadSeeker: rc, source: "cache", close: rc.Close}, nil
}

// forwardOnly is a verified read: it never seeks.
type forwardOnly struct{ io.ReadCloser }

func (forwardOnly) Seek(int64, int) (int64, error) {
	return 0, errors.New("a verified read does not seek")
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
