package blobfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/regnorm/regnorm/cache"
)

// spoolIngest copies a download's spool into the cache, following the
// download: the hashing and the cache write run beside it, not in its way.
type spoolIngest struct {
	f     *Download
	spool *os.File
	in    *cache.Ingest
	end   chan int64    // the body's length, once it is all in the spool
	stop  chan struct{} // closed to abort
	done  chan error
}

var errIngestAborted = errors.New("download aborted")

func startSpoolIngest(f *Download, spool *os.File, in *cache.Ingest) *spoolIngest {
	si := &spoolIngest{f: f, spool: spool, in: in, end: make(chan int64, 1), stop: make(chan struct{}), done: make(chan error, 1)}
	go func() { si.done <- si.run() }()
	return si
}

// finish says the spool holds the whole body, of length n, and waits until
// the cache has it too, or ctx ends (the download was abandoned: it frees
// its slot now).
func (si *spoolIngest) finish(ctx context.Context, n int64) error {
	si.end <- n
	select {
	case err := <-si.done:
		return err
	case <-ctx.Done():
		return errors.Join(context.Cause(ctx), si.abort())
	}
}

// abort stops the copy at once (a cancelled download must free its slot
// now, not once the cache has caught up) and returns why it stopped early,
// if it failed on its own.
func (si *spoolIngest) abort() error {
	close(si.stop)
	if err := <-si.done; !errors.Is(err, errIngestAborted) {
		return err
	}
	return nil
}

func (si *spoolIngest) run() error {
	buf := make([]byte, 256<<10)
	var off int64
	end := int64(-1)
	for {
		si.f.mu.Lock()
		written, changed := si.f.written, si.f.changed
		si.f.mu.Unlock()
		for off < written {
			select {
			case <-si.stop:
				return errIngestAborted
			default:
			}
			n, err := si.spool.ReadAt(buf[:min(int64(len(buf)), written-off)], off)
			if n > 0 {
				if _, werr := si.in.Write(buf[:n]); werr != nil {
					err = werr
				}
				off += int64(n)
			}
			if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
				// The download cannot be cached: stop it.
				err = fmt.Errorf("copy spool to cache: %w", err)
				si.f.cancel(err)
				return err
			}
		}
		if end >= 0 && off >= end {
			return nil
		}
		select {
		case <-changed:
		case end = <-si.end:
		case <-si.stop:
			return errIngestAborted
		}
	}
}
