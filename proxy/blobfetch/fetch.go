// Package blobfetch is the single-flight download of blobs from upstream
// into the cache: one download per upstream and digest, however many of
// that upstream's clients ask, each of them reading the download's spool as
// it grows, the cache filled beside it and published only once the digest
// verifies. Every resource it holds is bounded (see Fetcher). It reads the
// upstream through a Remote (an upstream.Repository, for one client) and
// builds no request of its own.
// It does not decide who may read a blob: its caller admits clients, and
// asks StartedBy and Answered to know when a download's upstream answer
// stands for a client too.
package blobfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Fetcher runs at most one download per upstream and digest. Every client
// of that upstream asking for a blob that is downloading reads it from the
// download's spool: an unlinked temporary file that the download appends to
// and readers tail. So the first client streams at upstream speed without
// waiting for the whole blob, N clients cost one upstream request, and a
// slow client never slows the download or the others.
//
// A download is shared by the clients of its upstream only: what one
// upstream sends (slowly, or wrong) reaches no other upstream's clients.
// Those download the digest from their own upstream, or read it from the
// cache once one download has verified and committed it; two downloads of
// one digest may both commit, and the cache's commit keeps either whole.
//
// Everything is bounded: at most limits.Downloads run at once and at most
// limits.Queued wait for a turn (beyond, a request is refused with 503 and
// Retry-After), and one upstream's downloads hold at most its share of
// both, so that an upstream that stalls cannot keep the others waiting;
// spools together hold at most limits.SpoolBytes (a download
// that does not fit goes to the cache only, and its readers wait for it to
// finish); and a download nobody is reading any more is cancelled after
// orphanGrace, so clients that go away cannot leave work behind.
type Fetcher struct {
	opts   Options
	limits Limits

	slots chan struct{} // one per running download

	mu         sync.Mutex
	inflight   map[key]*Download // running and waiting
	active     int               // every download not yet over, those replaced in inflight too
	shares     map[string]*share // by upstream name: configured upstreams only
	spoolBytes int64
}

// key is what a download is shared by: the upstream it reads from, and
// the digest. Never the digest alone: a hostile upstream's download of a
// digest would then be what another upstream's clients read.
type key struct {
	upstream string
	dgst     digest.Digest
}

// share is one upstream's part of the limits: its downloads wait for one of
// its own slots before they wait for a global one, so whatever they hold,
// the rest of the global slots stay free for the other upstreams.
type share struct {
	name   string
	slots  chan struct{} // one per running download of this upstream
	active int           // its downloads not yet over, running or waiting
	limit  int           // bound on active
}

// Store is what a Fetcher needs of the cache.
type Store interface {
	StatBlob(ctx context.Context, dgst digest.Digest) (cache.BlobInfo, error)
	cache.BlobIngester
}

// Remote is the upstream repository a download reads from, as the client
// that starts it (an *upstream.Repository).
type Remote interface {
	// GetBlob opens the blob's body upstream: resumed where it stops, and
	// bounded by the upstream's maxBlobSize; not verified.
	GetBlob(ctx context.Context, dgst digest.Digest) (*upstream.Blob, error)
	// Upstream names the upstream: its share of the limits, and the
	// metrics' and the log's label.
	Upstream() string
	// Name is the repository's, for the log.
	Name() string
	// Identity tells apart who asks: the upstream's answer to a download
	// stands for every reader with the same Identity, and only for them.
	Identity() string
	// MaxDownloads is the upstream's own share of Limits.Downloads; 0
	// takes Limits.PerUpstream.
	MaxDownloads() int
}

// Clock is the time orphaned downloads are cancelled by.
type Clock interface {
	// AfterFunc is time.AfterFunc on this clock; stop is its Stop.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// Options configure a Fetcher.
type Options struct {
	Store Store
	// SpoolDir holds the spool files (unlinked at once: a crash leaves
	// nothing behind).
	SpoolDir string
	// Timeout bounds one download, however many clients read it.
	Timeout time.Duration
	Limits  Limits
	Clock   Clock
	Metrics *Metrics
	Log     *slog.Logger
	// OnHolds is called when upstream said r's repository holds dgst (it
	// answered 200 to a download), to r's client.
	OnHolds func(ctx context.Context, r Remote, dgst digest.Digest)
	// OnCommit is called when a blob of size bytes entered the cache.
	OnCommit func(size int64)
}

// New is a Fetcher with opts; zero limits take their defaults.
func New(opts Options) *Fetcher {
	limits := opts.Limits.withDefaults()
	return &Fetcher{opts: opts, limits: limits, slots: make(chan struct{}, limits.Downloads), inflight: map[key]*Download{},
		shares: map[string]*share{}}
}

// Limits bound the downloads from upstream.
type Limits struct {
	// Downloads is how many blob downloads run at once.
	Downloads int
	// Queued is how many more may wait for a turn (4 × Downloads when
	// zero); beyond that a request is answered 503 with Retry-After.
	Queued int
	// SpoolBytes bounds the spool files of the downloads in progress. A
	// download that does not fit writes to the cache only; its readers wait
	// for it to finish.
	SpoolBytes int64
	// PerUpstream is how many of Downloads one upstream's downloads may
	// hold at once, unless the upstream says (upstream.Config.MaxDownloads):
	// default three quarters of Downloads, at least 1. An upstream's
	// running and waiting downloads together are bounded in the same
	// proportion of Downloads + Queued.
	PerUpstream int
}

// queuedPerDownload is how many downloads may wait for each that may run,
// when Limits.Queued is not given.
const queuedPerDownload = 4

// DefaultLimits are what zero Limits fields take, but for PerUpstream,
// which is derived from Downloads.
func DefaultLimits() Limits {
	const downloads = 32
	return Limits{Downloads: downloads, Queued: queuedPerDownload * downloads, SpoolBytes: 8 << 30}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.Downloads <= 0 {
		l.Downloads = d.Downloads
	}
	if l.Queued <= 0 {
		l.Queued = queuedPerDownload * l.Downloads
	}
	if l.PerUpstream <= 0 {
		l.PerUpstream = max(1, l.Downloads*3/4)
	}
	l.PerUpstream = min(l.PerUpstream, l.Downloads)
	if l.SpoolBytes <= 0 {
		l.SpoolBytes = d.SpoolBytes
	}
	return l
}

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
}

var errOrphaned = errors.New("no client is reading the download any more")

// Join returns the download of dgst from r's upstream, starting it from r
// if none runs. The caller must release it with Done.
func (fs *Fetcher) Join(r Remote, dgst digest.Digest) (*Download, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	k := key{upstream: r.Upstream(), dgst: dgst}
	if f, ok := fs.inflight[k]; ok && f.attach() {
		return f, nil
	}
	// Running and waiting downloads together, so the bound does not depend
	// on how soon the waiting ones were scheduled; one that was cancelled
	// and replaced counts until it is over.
	sh := fs.shareOf(r)
	if fs.active >= fs.limits.Downloads+fs.limits.Queued || sh.active >= sh.limit {
		fs.opts.Metrics.fetchesRejected.Inc()
		msg := "too many downloads in progress; retry shortly"
		if sh.active >= sh.limit {
			msg = "too many downloads in progress from upstream " + sh.name + "; retry shortly"
		}
		return nil, errcode.Busy(msg, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fs.opts.Timeout)
	ctx, cancelCause := context.WithCancelCause(ctx)
	f := &Download{key: k, dgst: dgst, owner: r.Identity(), clock: fs.opts.Clock, ctx: ctx, ready: make(chan struct{}), changed: make(chan struct{}),
		cancel: func(cause error) { cancelCause(cause); cancel() }, refs: 1}
	fs.inflight[k] = f
	fs.active++
	sh.active++
	fs.opts.Metrics.queuedFetches.Inc()
	fs.opts.Metrics.downloads.WithLabelValues(sh.name, "waiting").Inc()
	go fs.run(ctx, f, r, sh)
	return f, nil
}

// shareOf is r's upstream's share of the limits, made on its first
// download. Called with fs.mu held; r's upstream is a configured one, so
// the map stays small.
func (fs *Fetcher) shareOf(r Remote) *share {
	if sh, ok := fs.shares[r.Upstream()]; ok {
		return sh
	}
	n := fs.limits.PerUpstream
	if own := r.MaxDownloads(); own > 0 {
		n = min(own, fs.limits.Downloads)
	}
	sh := &share{name: r.Upstream(), slots: make(chan struct{}, n),
		limit: max(1, (fs.limits.Downloads+fs.limits.Queued)*n/fs.limits.Downloads)}
	fs.shares[r.Upstream()] = sh
	return sh
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

// Ready waits until f, joined from r, knows its size. A download that
// someone else started and that the upstream refused them (401, 403, 404)
// says nothing about this caller, who was admitted on its own: it waits for
// that one to end and starts its own. On an error, f has been released.
func (fs *Fetcher) Ready(ctx context.Context, f *Download, r Remote) (*Download, error) {
	err := f.waitReady(ctx)
	if err == nil || f.StartedBy(r) || !upstream.Refused(err) {
		if err != nil {
			f.Done()
		}
		return f, err
	}
	waitErr := f.waitDone(ctx)
	f.Done()
	if ctx.Err() != nil {
		return nil, waitErr
	}
	if f, err = fs.Join(r, f.dgst); err != nil {
		return nil, err
	}
	if err := f.waitReady(ctx); err != nil {
		f.Done()
		return nil, err
	}
	return f, nil
}

// Ensure returns once dgst is in the cache, downloading it (or joining the
// download under way) if it is not. The caller has admitted the client.
func (fs *Fetcher) Ensure(ctx context.Context, r Remote, dgst digest.Digest) error {
	if _, err := fs.opts.Store.StatBlob(ctx, dgst); err == nil {
		return nil
	}
	// The download runs on its own context: the caller's request pays for
	// it here.
	if err := upstream.Spend(ctx); err != nil {
		return err
	}
	f, err := fs.Join(r, dgst)
	if err != nil {
		return err
	}
	if f, err = fs.Ready(ctx, f, r); err != nil {
		return err
	}
	defer f.Done()
	return f.waitDone(ctx)
}

func (fs *Fetcher) run(ctx context.Context, f *Download, r Remote, sh *share) {
	defer f.cancel(nil)
	err := fs.wait(ctx, sh)
	if err == nil {
		fs.opts.Metrics.inflightFetches.Inc()
		fs.opts.Metrics.downloads.WithLabelValues(sh.name, "running").Inc()
		err = fs.download(ctx, f, r)
		fs.opts.Metrics.inflightFetches.Dec()
		fs.opts.Metrics.downloads.WithLabelValues(sh.name, "running").Dec()
		<-fs.slots
		<-sh.slots
	} else {
		f.early = err
		close(f.ready)
	}
	if err != nil && errors.Is(context.Cause(ctx), errOrphaned) {
		fs.opts.Metrics.fetchesAbandoned.Inc()
		fs.opts.Log.Info("blob download abandoned: no client is reading it", "upstream", r.Upstream(), "repo", r.Name(), "digest", f.dgst)
	} else if err != nil {
		fs.opts.Log.Warn("blob download failed", "upstream", r.Upstream(), "repo", r.Name(), "digest", f.dgst, "error", err)
	}
	fs.mu.Lock()
	fs.active--
	sh.active--
	if fs.inflight[f.key] == f {
		delete(fs.inflight, f.key)
	}
	fs.mu.Unlock()
	f.finish(err)
}

// wait waits for a turn to download: first one of the upstream's own
// slots, then a global one. A download waiting for its upstream's slot
// holds no global one.
func (fs *Fetcher) wait(ctx context.Context, sh *share) error {
	defer fs.opts.Metrics.queuedFetches.Dec()
	defer fs.opts.Metrics.downloads.WithLabelValues(sh.name, "waiting").Dec()
	select {
	case sh.slots <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case fs.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		<-sh.slots
		return context.Cause(ctx)
	}
}

// reserveSpool takes size bytes of the spool budget, if they fit.
func (fs *Fetcher) reserveSpool(size int64) (release func(), ok bool) {
	if size < 0 {
		return nil, false
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.spoolBytes+size > fs.limits.SpoolBytes {
		return nil, false
	}
	fs.spoolBytes += size
	fs.opts.Metrics.spoolBytes.Add(float64(size))
	var once sync.Once
	return func() {
		once.Do(func() {
			fs.mu.Lock()
			fs.spoolBytes -= size
			fs.mu.Unlock()
			fs.opts.Metrics.spoolBytes.Sub(float64(size))
		})
	}, true
}

// download fetches the blob into the cache and, when it fits the budget,
// the spool. The blob is published in the cache only if its size and digest
// verify.
func (fs *Fetcher) download(ctx context.Context, f *Download, r Remote) error {
	fail := func(err error) error {
		f.early = err
		close(f.ready)
		return err
	}
	// A download that finished just before this one was started has
	// already published the blob.
	if _, err := fs.opts.Store.StatBlob(ctx, f.dgst); err == nil {
		return fail(nil)
	}
	body, err := r.GetBlob(ctx, f.dgst)
	if err != nil {
		return fail(err)
	}
	defer body.Close()
	f.answered = true
	fs.opts.OnHolds(ctx, r, f.dgst)
	in, err := fs.opts.Store.IngestBlob(ctx, f.dgst, body.Size)
	if err != nil {
		return fail(err)
	}
	var spool *os.File
	release, ok := fs.reserveSpool(body.Size)
	if !ok {
		fs.opts.Log.Info("blob download goes to the cache only: its clients wait for all of it", "upstream", r.Upstream(),
			"digest", f.dgst, "size", body.Size, "spool_limit", fs.limits.SpoolBytes)
	}
	if ok {
		if spool, err = os.CreateTemp(fs.opts.SpoolDir, "regnorm-spool-*"); err != nil {
			release()
			return fail(errors.Join(fmt.Errorf("create spool: %w", err), in.Cancel(ctx)))
		}
		os.Remove(spool.Name()) // lives while open; nothing to clean up after a crash
		f.release = release
	}
	f.size, f.spool = body.Size, spool
	close(f.ready)

	// With a spool, the cache is written from it, beside the download:
	// clients read the spool without waiting for the hashing and the cache
	// write. Without one, the download writes the cache itself.
	sink, ingest := in, (*spoolIngest)(nil)
	if spool != nil {
		sink, ingest = nil, startSpoolIngest(f, spool, in)
	}
	abort := func(err error) error {
		if ingest != nil {
			err = errors.Join(err, ingest.abort())
		}
		return errors.Join(err, in.Cancel(context.WithoutCancel(ctx)))
	}

	// The body resumes itself where it stopped, as often as the retry
	// policy allows: an error here is final.
	got, err := copyBody(f, body, spool, sink)
	body.Close() // now, not after the cache write: the upstream stops sending
	if err != nil {
		return abort(err)
	}
	if ingest != nil {
		if err := ingest.finish(ctx, got); err != nil {
			return errors.Join(err, in.Cancel(context.WithoutCancel(ctx)))
		}
	}
	if err := in.Commit(ctx); err != nil {
		return err
	}
	fs.opts.OnCommit(in.Size())
	return nil
}

// copyBody appends body to the spool and the cache (each if not nil) until
// EOF, and returns how many bytes it appended.
func copyBody(f *Download, body io.Reader, spool *os.File, in *cache.Ingest) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, rerr := body.Read(buf)
		if f.size >= 0 && total+int64(n) > f.size {
			// More than the upstream announced: the spool was reserved for
			// that much, and the digest could not verify anyway.
			return total, fmt.Errorf("upstream sent more than the %d bytes it announced", f.size)
		}
		if n > 0 {
			if spool != nil {
				if _, err := spool.Write(buf[:n]); err != nil {
					return total, fmt.Errorf("write spool: %w", err)
				}
			}
			if in != nil {
				if _, err := in.Write(buf[:n]); err != nil {
					return total, err
				}
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

// Answered reports whether the upstream said yes to the download's owner.
// It did not when the blob was found in the cache before any request went
// out. Valid once Ready returned.
func (f *Download) Answered() bool { return f.answered }

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
