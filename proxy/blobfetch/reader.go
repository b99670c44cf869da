package blobfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Tail reads the download from its spool as it grows, from the start;
// closing the reader is the caller's Done. A download without a spool has
// nothing to tail: Tail waits for it to end, calls Done, and returns nil and
// the download's outcome; without an error the blob is then in the cache.
func (f *Download) Tail(ctx context.Context) (*Reader, error) {
	if f.spool == nil {
		err := f.waitDone(ctx)
		f.Done()
		return nil, err
	}
	return &Reader{ctx: ctx, f: f}, nil
}

// readable is how far readers may read: everything written, except that the
// last byte is held back until the digest has verified. A client therefore
// never receives a complete body with wrong content; it sees a short read.
func (f *Download) readable() (avail int64, finished bool, err error, changed chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	avail = f.written
	if !(f.finished && f.err == nil) && avail == f.size && avail > 0 {
		avail--
	}
	return avail, f.finished, f.err, f.changed
}

// Reader reads a downloading blob from its spool, waiting for bytes as
// they arrive. It seeks, so http.ServeContent can answer ranges. Reading to
// its end means the download verified: the last byte waits for that.
type Reader struct {
	ctx context.Context
	f   *Download // the reader holds a reference, so the spool stays open
	off int64
	err error // why reading stopped early, for the log
}

func (r *Reader) Read(p []byte) (int, error) {
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

func (r *Reader) Seek(offset int64, whence int) (int64, error) {
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

// Wait waits for the download to end, and returns its outcome: without an
// error, the blob is in the cache. The reader's hold keeps the download
// going meanwhile.
func (r *Reader) Wait() error { return r.f.waitDone(r.ctx) }

// Close releases the reader's hold on the download.
func (r *Reader) Close() error {
	r.f.Done()
	return nil
}

// Err is why reading stopped before the end, if it did: for the log.
func (r *Reader) Err() error { return r.err }
