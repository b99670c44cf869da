package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// Blob is a blob's body from upstream. A body cut short or stalled is
// resumed where it stopped, with a range request, as often as the retry
// policy allows: an error from Read is final. Blob does not verify the
// digest; the reader does.
type Blob struct {
	size    int64 // announced; -1 when upstream sent none
	ctx     context.Context
	u       *Registry
	repo    string
	path    string // the blob's, for resuming
	dgst    digest.Digest
	body    io.ReadCloser // nil between an interrupted body and its resumption
	off     int64
	attempt int
	err     error // final: every later Read returns it
}

// errClosed is what Read returns after Close.
var errClosed = errors.New("read blob: body closed")

// errBlobTooLarge is the cause of a blob refused or stopped for being larger
// than its upstream's MaxBlobSize.
var errBlobTooLarge = errors.New("blob is larger than the upstream's maxBlobSize")

// CheckBlobSize refuses a blob whose announced size (-1: none) is larger
// than the upstream's MaxBlobSize, with the error a client gets: HeadBlob
// leaves that to its caller, GetBlob does it itself.
func (r *Repository) CheckBlobSize(size int64) error { return r.reg.checkBlobSize(size) }

func (u *Registry) checkBlobSize(size int64) error {
	if u.maxBlob > 0 && size > u.maxBlob {
		return u.tooLarge(fmt.Errorf("%w: upstream %s announced %d bytes, the limit is %d", errBlobTooLarge, u.name, size, u.maxBlob))
	}
	return nil
}

// tooLarge is the refusal of a blob over MaxBlobSize: 502, since the
// upstream offered something this mirror will not hold; not retried, since
// it would be the same blob again.
func (u *Registry) tooLarge(cause error) *errcode.Error {
	u.metrics.blobsTooLarge.WithLabelValues(u.name).Inc()
	return errcode.New(http.StatusBadGateway, errcode.Unavailable,
		fmt.Sprintf("blob is larger than upstream %s's maxBlobSize (%d bytes)", u.name, u.maxBlob), cause)
}

// HeadBlob asks upstream whether the repository holds dgst, and returns
// the size it announced (-1: none). A refusal or failure is the
// *errcode.Error a client would get (code BLOB_UNKNOWN for a 404).
func (r *Repository) HeadBlob(ctx context.Context, dgst digest.Digest) (size int64, err error) {
	resp, err := r.reg.do(ctx, http.MethodHead, r.name, r.path("blobs", dgst.String()), nil, nil)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, r.reg.statusError(resp, errcode.BlobUnknown)
	}
	drain(resp)
	return resp.ContentLength, nil
}

// GetBlob asks upstream for dgst in the repository: its body, bounded by
// MaxBlobSize and resumed where it stops (see Blob). A refusal or failure is
// the *errcode.Error a client would get (code BLOB_UNKNOWN for a 404).
func (r *Repository) GetBlob(ctx context.Context, dgst digest.Digest) (*Blob, error) {
	u, path := r.reg, r.path("blobs", dgst.String())
	resp, err := u.do(ctx, http.MethodGet, r.name, path, nil, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, u.statusError(resp, errcode.BlobUnknown)
	}
	if err := u.checkBlobSize(resp.ContentLength); err != nil {
		resp.Body.Close() // not drained: it is too large to read
		return nil, err
	}
	return &Blob{size: resp.ContentLength, ctx: ctx, u: u, repo: r.name, path: path, dgst: dgst, body: resp.Body, attempt: 1}, nil
}

// GetBlobFrom is the rest of dgst from offset on, of a blob of size bytes
// whose beginning came from elsewhere (another replica that stopped): its
// first Read asks upstream with a range request, as a resumption does.
func (r *Repository) GetBlobFrom(ctx context.Context, dgst digest.Digest, offset, size int64) *Blob {
	return &Blob{size: size, ctx: ctx, u: r.reg, repo: r.name, path: r.path("blobs", dgst.String()), dgst: dgst, off: offset, attempt: 1}
}

// Size is the length upstream announced; -1 when it sent none.
func (b *Blob) Size() int64 { return b.size }

func (b *Blob) Read(p []byte) (int, error) {
	for {
		if b.err != nil {
			return 0, b.err
		}
		if b.body == nil {
			body, err := b.resume()
			if err != nil {
				if b.ctx.Err() != nil {
					err = errors.Join(err, context.Cause(b.ctx))
				}
				b.err = err
				return 0, err
			}
			b.body = body
		}
		limit := b.u.maxBlob
		if limit > 0 && int64(len(p)) > limit+1-b.off {
			p = p[:limit+1-b.off] // one byte more than allowed tells a body that is too long
		}
		n, err := b.body.Read(p)
		if limit > 0 && b.off+int64(n) > limit {
			// Whatever length it announced (none, for a chunked body),
			// nothing past the limit is read.
			n = int(limit - b.off)
			b.off = limit
			b.body.Close()
			b.body = nil
			b.err = b.u.tooLarge(fmt.Errorf("%w: upstream %s sent more than %d bytes of %s", errBlobTooLarge, b.u.name, limit, b.dgst))
			return n, b.err
		}
		b.off += int64(n)
		if err == nil || err == io.EOF {
			return n, err
		}
		b.body.Close()
		b.body = nil
		if err := b.mayResume(err); err != nil {
			b.err = err
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// mayResume waits before the next attempt, or returns the error to give up
// with.
func (b *Blob) mayResume(cause error) error {
	fail := fmt.Errorf("read blob %s from upstream %s: %w", b.dgst, b.u.name, cause)
	b.attempt++
	if b.ctx.Err() != nil {
		return errors.Join(fail, context.Cause(b.ctx))
	}
	wait, ok := b.u.retry.Wait(b.attempt, 0)
	if !ok {
		return fail
	}
	reason := "truncated"
	if errors.Is(cause, ErrStalled) {
		reason = "stalled"
	}
	b.u.metrics.Retry(b.u.name, reason)
	b.u.log.Info("resuming blob download", "digest", b.dgst, "offset", b.off, "error", cause)
	select {
	case <-time.After(wait):
		return nil
	case <-b.ctx.Done():
		return errors.Join(fail, context.Cause(b.ctx))
	}
}

// resume asks upstream for the rest of the blob from where it stopped.
func (b *Blob) resume() (io.ReadCloser, error) {
	header := http.Header{"Range": {fmt.Sprintf("bytes=%d-", b.off)}}
	resp, err := b.u.do(b.ctx, http.MethodGet, b.repo, b.path, nil, header)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		if resp.StatusCode == http.StatusOK {
			// An upstream that ignores ranges sends it all again: what was
			// read already is skipped.
			if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
				resp.Body.Close()
				return nil, fmt.Errorf("resume blob %s at %d: skip what was read: %w", b.dgst, b.off, err)
			}
			return resp.Body, nil
		}
		return nil, fmt.Errorf("resume blob %s at %d: %w", b.dgst, b.off, b.u.statusError(resp, errcode.BlobUnknown))
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", b.off)) {
		drain(resp)
		return nil, fmt.Errorf("resume blob %s at %d: upstream answered range %q", b.dgst, b.off, resp.Header.Get("Content-Range"))
	}
	return resp.Body, nil
}

// Close ends the body; reading after it is an error.
func (b *Blob) Close() error {
	if b.err == nil {
		b.err = errClosed
	}
	if b.body == nil {
		return nil
	}
	err := b.body.Close()
	b.body = nil
	return err
}
