package blobfetch

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// orphanGrace is how long a download nobody reads goes on: long enough for
// a client that retries to find it again.
const orphanGrace = 10 * time.Second

// Download is one download. Fields above mu are set before ready closes and
// never change afterwards.
type Download struct {
	key    key
	dgst   digest.Digest
	owner  string // the Identity of who started it: its upstream's yes answers for them
	clock  Clock
	ctx    context.Context // ends when the download is over, or abandoned
	cancel context.CancelCauseFunc
	ready  chan struct{}
	size   int64    // from the response; -1 when upstream sent no length
	spool  *os.File // nil: read the blob from the cache once it is there
	// answered: the upstream said yes to the owner (200). Not set when the
	// blob was found in the cache before any request went out.
	answered bool
	// early is set when the download failed before the body started.
	early error

	mu       sync.Mutex
	written  int64
	finished bool
	err      error         // the download's outcome, once finished
	changed  chan struct{} // closed and replaced on every change
	refs     int           // readers and waiters
	orphaned func() bool   // stops the orphan timer
	closed   bool          // the spool is closed
	release  func()        // gives the spool's space back
	also     []Remote      // others the upstream said yes to (Also)
	sent     bool          // OnSent was told: Also is too late
}

// maxAlso bounds the remotes a download remembers for OnSent (Also): the
// rest ask their upstream again next time.
const maxAlso = 64

var errOrphaned = errors.New("no client is reading the download any more")

// Also tells OnSent of r too when the download's bytes verify: r's
// upstream said yes to r's client (a HEAD), who reads this download, so
// the bytes are its repository's as well.
func (f *Download) Also(r Remote) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.sent && len(f.also) < maxAlso {
		f.also = append(f.also, r)
	}
}

// takeAlso returns the remotes to tell OnSent of besides the one that
// started the download, once its bytes verified; Also is too late from
// then on.
func (f *Download) takeAlso() []Remote {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = true
	return f.also
}

// attach adds a reader to a download that is not being cancelled. One
// whose orphan timer already fired, or that timed out, is as good as over:
// the caller starts another.
func (f *Download) attach() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.orphaned != nil {
		fired := !f.orphaned()
		f.orphaned = nil
		if fired {
			return false
		}
	}
	if f.ctx.Err() != nil {
		return false
	}
	f.refs++
	return true
}

func (f *Download) advance(n int64) {
	f.mu.Lock()
	f.written += n
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *Download) finish(err error) {
	f.mu.Lock()
	f.finished, f.err = true, err
	close(f.changed)
	f.changed = make(chan struct{})
	f.closeSpoolLocked()
	f.mu.Unlock()
}

// Done is a reader's release: the last one to go closes the spool once the
// download finished, or starts the orphan timer while it still runs.
func (f *Download) Done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs--
	if f.refs > 0 {
		return
	}
	if f.finished {
		f.closeSpoolLocked()
		return
	}
	f.orphaned = f.clock.AfterFunc(orphanGrace, func() { f.cancel(errOrphaned) })
}

func (f *Download) closeSpoolLocked() {
	if f.refs > 0 || !f.finished || f.spool == nil || f.closed {
		return
	}
	f.closed = true
	f.spool.Close()
	if f.release != nil {
		f.release()
	}
}

// StartedBy reports whether the download asks the upstream as r would:
// its answer then answers for r's client too.
func (f *Download) StartedBy(r Remote) bool {
	return f.owner == r.Identity()
}

// Spooled reports whether the download spools, so that readers may tail
// it (Tail); without a spool, they read the cache once it is whole. Valid
// once Ready returned.
func (f *Download) Spooled() bool { return f.spool != nil }

// Answered reports whether the upstream said yes to the download's owner.
// It did not when the blob was found in the cache before any request went
// out. Valid once Ready returned.
func (f *Download) Answered() bool { return f.answered }

// waitReady waits until the download knows its size, or failed first.
func (f *Download) waitReady(ctx context.Context) error {
	select {
	case <-f.ready:
		return f.early
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitDone waits for the download's outcome.
func (f *Download) waitDone(ctx context.Context) error {
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
