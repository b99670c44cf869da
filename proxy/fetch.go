package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
)

// blobFetches runs at most one upstream download per digest. Every client
// asking for a blob that is downloading reads it from the download's spool:
// an unlinked temporary file that the download appends to and readers tail.
// So the first client streams at upstream speed without waiting for the whole
// blob, N clients cost one upstream request, and a slow client never slows
// the download or the others.
type blobFetches struct {
	onCommit func(size int64) // a blob entered the cache
	store    Store
	spoolDir string
	timeout  time.Duration
	metrics  *Metrics
	log      *slog.Logger

	mu       sync.Mutex
	inflight map[digest.Digest]*blobFetch
}

// blobFetch is one download. Fields above mu are set before ready closes and
// never change afterwards.
type blobFetch struct {
	dgst  digest.Digest
	ready chan struct{}
	size  int64    // -1: upstream sent no length; wait for the cache
	spool *os.File // nil when cached or failed before the body
	// cached: the blob was already in the cache; read it there.
	cached bool
	// early is set when the download failed before the body started.
	early error

	mu       sync.Mutex
	written  int64
	finished bool
	err      error         // the download's outcome, once finished
	changed  chan struct{} // closed and replaced on every change
	refs     int
}

// join returns the download of dgst, starting it if none runs. The caller
// must release it.
func (fs *blobFetches) join(up *upstream, repo string, dgst digest.Digest) *blobFetch {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, ok := fs.inflight[dgst]
	if !ok {
		f = &blobFetch{dgst: dgst, ready: make(chan struct{}), changed: make(chan struct{}), refs: 1}
		fs.inflight[dgst] = f
		go fs.run(f, up, repo)
	}
	f.mu.Lock()
	f.refs++
	f.mu.Unlock()
	return f
}

// ensure returns once dgst is in the cache, downloading it (or joining the
// download under way) if it is not.
func (fs *blobFetches) ensure(ctx context.Context, up *upstream, repo string, dgst digest.Digest) error {
	if _, err := fs.store.StatBlob(ctx, dgst); err == nil {
		return nil
	}
	f := fs.join(up, repo, dgst)
	defer f.release()
	return f.waitDone(ctx)
}

func (fs *blobFetches) run(f *blobFetch, up *upstream, repo string) {
	defer f.release()
	fs.metrics.inflightFetches.Inc()
	defer fs.metrics.inflightFetches.Dec()
	// The download outlives the client that started it: others may be
	// reading, and a finished download fills the cache for everyone.
	ctx, cancel := context.WithTimeout(context.Background(), fs.timeout)
	defer cancel()

	err := fs.download(ctx, f, up, repo)
	if err != nil {
		fs.log.Warn("blob download failed", "upstream", up.name, "repo", repo, "digest", f.dgst, "error", err)
	}
	fs.mu.Lock()
	delete(fs.inflight, f.dgst)
	fs.mu.Unlock()
	f.finish(err)
}

// download fetches the blob into the cache and the spool. The blob is
// published in the cache only if its size and digest verify.
func (fs *blobFetches) download(ctx context.Context, f *blobFetch, up *upstream, repo string) error {
	// A download that finished just before this one was started has
	// already published the blob.
	if _, err := fs.store.StatBlob(ctx, f.dgst); err == nil {
		f.cached = true
		close(f.ready)
		return nil
	}
	fail := func(err error) error {
		f.early = err
		close(f.ready)
		return err
	}
	resp, err := up.do(ctx, http.MethodGet, repo, "/v2/"+repo+"/blobs/"+f.dgst.String(), nil, nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(up.statusError(resp, CodeBlobUnknown))
	}
	spool, err := os.CreateTemp(fs.spoolDir, "regnorm-spool-*")
	if err != nil {
		resp.Body.Close()
		return fail(fmt.Errorf("create spool: %w", err))
	}
	os.Remove(spool.Name()) // lives while open; nothing to clean up after a crash
	in, err := fs.store.IngestBlob(ctx, f.dgst, resp.ContentLength)
	if err != nil {
		resp.Body.Close()
		spool.Close()
		return fail(err)
	}
	f.size, f.spool = resp.ContentLength, spool
	close(f.ready)

	// A body cut short or stalled is resumed where it stopped, with a
	// range request, as often as the retry policy allows.
	body, got := resp.Body, int64(0)
	for attempt := 1; ; attempt++ {
		n, err := copyBody(f, body, spool, in)
		body.Close()
		got += n
		if err == nil {
			break
		}
		var local *localWriteError
		wait, ok := up.retry.wait(attempt+1, 0)
		if errors.As(err, &local) || !ok || ctx.Err() != nil {
			return errors.Join(fmt.Errorf("read blob %s from upstream %s: %w", f.dgst, up.name, err), in.Cancel(ctx))
		}
		reason := "truncated"
		if errors.Is(err, errStalled) {
			reason = "stalled"
		}
		fs.metrics.upstreamRetries.WithLabelValues(up.name, reason).Inc()
		fs.log.Info("resuming blob download", "upstream", up.name, "digest", f.dgst, "offset", got, "error", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return errors.Join(ctx.Err(), in.Cancel(ctx))
		}
		if body, err = resumeBlob(ctx, up, repo, f.dgst, got); err != nil {
			return errors.Join(err, in.Cancel(ctx))
		}
	}
	if err := in.Commit(ctx); err != nil {
		return err
	}
	fs.onCommit(in.Size())
	return nil
}

// localWriteError is a failure to write the spool or the cache: not the
// upstream's fault, and not retried.
type localWriteError struct{ err error }

func (e *localWriteError) Error() string { return e.err.Error() }
func (e *localWriteError) Unwrap() error { return e.err }

// copyBody appends body to the spool and the cache until EOF, and returns
// how many bytes it appended.
func copyBody(f *blobFetch, body io.Reader, spool *os.File, in *cache.Ingest) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := spool.Write(buf[:n]); err != nil {
				return total, &localWriteError{fmt.Errorf("write spool: %w", err)}
			}
			if _, err := in.Write(buf[:n]); err != nil {
				return total, &localWriteError{err}
			}
			total += int64(n)
			f.advance(int64(n))
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// resumeBlob asks upstream for the rest of a blob from offset on.
func resumeBlob(ctx context.Context, up *upstream, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	header := http.Header{"Range": {fmt.Sprintf("bytes=%d-", offset)}}
	resp, err := up.do(ctx, http.MethodGet, repo, "/v2/"+repo+"/blobs/"+dgst.String(), nil, header)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		if resp.StatusCode == http.StatusOK && offset == 0 {
			return resp.Body, nil
		}
		return nil, fmt.Errorf("resume blob %s at %d: %w", dgst, offset, up.statusError(resp, CodeBlobUnknown))
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", offset)) {
		drain(resp)
		return nil, fmt.Errorf("resume blob %s at %d: upstream answered range %q", dgst, offset, resp.Header.Get("Content-Range"))
	}
	return resp.Body, nil
}

func (f *blobFetch) advance(n int64) {
	f.mu.Lock()
	f.written += n
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *blobFetch) finish(err error) {
	f.mu.Lock()
	f.finished, f.err = true, err
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *blobFetch) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs--
	if f.refs == 0 && f.spool != nil {
		f.spool.Close()
	}
}

// waitReady waits until the download knows its size, or failed first.
func (f *blobFetch) waitReady(ctx context.Context) error {
	select {
	case <-f.ready:
		return f.early
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitDone waits for the download's outcome.
func (f *blobFetch) waitDone(ctx context.Context) error {
	for {
		f.mu.Lock()
		finished, err, changed := f.finished, f.err, f.changed
		f.mu.Unlock()
		if finished {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// readable is how far readers may read: everything written, except that the
// last byte is held back until the digest has verified. A client therefore
// never receives a complete body with wrong content; it sees a short read.
func (f *blobFetch) readable() (avail int64, finished bool, err error, changed chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	avail = f.written
	if !(f.finished && f.err == nil) && avail == f.size && avail > 0 {
		avail--
	}
	return avail, f.finished, f.err, f.changed
}

// spoolReader reads a downloading blob from its spool, waiting for bytes as
// they arrive. It seeks, so http.ServeContent can answer ranges.
type spoolReader struct {
	ctx context.Context
	f   *blobFetch
	off int64
	err error // why reading stopped early, for the log
}

func (r *spoolReader) Read(p []byte) (int, error) {
	for {
		if r.off >= r.f.size {
			if err := r.f.waitDone(r.ctx); err != nil {
				r.err = err
				return 0, err
			}
			return 0, io.EOF
		}
		avail, finished, err, changed := r.f.readable()
		if r.off < avail {
			n, rerr := r.f.spool.ReadAt(p[:min(int64(len(p)), avail-r.off)], r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			r.err = fmt.Errorf("read spool: %w", rerr)
			return 0, r.err
		}
		if finished && err != nil {
			r.err = err
			return 0, err
		}
		select {
		case <-changed:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			return 0, r.err
		}
	}
}

func (r *spoolReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.f.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = offset
	return offset, nil
}
