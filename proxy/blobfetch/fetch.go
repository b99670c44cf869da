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

// Store is what a Fetcher needs of the cache.
type Store interface {
	StatBlob(ctx context.Context, dgst digest.Digest) (cache.BlobInfo, error)
	cache.BlobIngester
}

// Remote is the upstream repository a download reads from, as the client
// that starts it: an *upstream.Repository, or the mirror's relay of another
// replica's download of it.
type Remote interface {
	// GetBlob opens the blob's body upstream: resumed where it stops, and
	// bounded by the upstream's maxBlobSize; not verified.
	GetBlob(ctx context.Context, dgst digest.Digest) (Body, error)
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

// Body is a blob's body as a Remote opens it (an *upstream.Blob): an error
// from Read is final.
type Body interface {
	io.ReadCloser
	// Size is the length announced; -1 when none was.
	Size() int64
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
	// nothing behind). Default os.TempDir().
	SpoolDir string
	// Timeout bounds one download, however many clients read it. Default
	// DefaultTimeout.
	Timeout time.Duration
	Limits  Limits
	Clock   Clock
	Metrics *Metrics
	Log     *slog.Logger
	// Sent reports whether r's upstream has sent dgst's bytes before. A
	// download of a cached blob is skipped only when it has: else the
	// blob is downloaded from it all the same, since the caller wants that
	// upstream's bytes (its proof that it holds them), not only the blob.
	// Nil: none has, and every download goes to its upstream (safe, and
	// dear: set it).
	Sent func(ctx context.Context, r Remote, dgst digest.Digest) bool
	// OnAnswered is called when upstream answered 200 to a download of
	// dgst by r's client: its word, not yet its bytes.
	OnAnswered func(ctx context.Context, r Remote, dgst digest.Digest)
	// OnSent is called when the bytes upstream sent for r's download of
	// dgst verified, before they enter the cache: r's repository holds
	// dgst.
	OnSent func(ctx context.Context, r Remote, dgst digest.Digest)
	// OnCommit is called when a blob of size bytes entered the cache.
	OnCommit func(size int64)
}

// DefaultTimeout bounds one download unless Options say otherwise.
const DefaultTimeout = time.Hour

// New is a Fetcher with opts; zero fields and limits take their defaults.
func New(opts Options) *Fetcher {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = os.TempDir()
	}
	if opts.OnAnswered == nil {
		opts.OnAnswered = func(context.Context, Remote, digest.Digest) {}
	}
	if opts.Sent == nil {
		opts.Sent = func(context.Context, Remote, digest.Digest) bool { return false }
	}
	if opts.OnSent == nil {
		opts.OnSent = func(context.Context, Remote, digest.Digest) {}
	}
	if opts.OnCommit == nil {
		opts.OnCommit = func(int64) {}
	}
	limits := opts.Limits.withDefaults()
	return &Fetcher{opts: opts, limits: limits, slots: make(chan struct{}, limits.Downloads), inflight: map[key]*Download{},
		shares: map[string]*share{}}
}

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
	fs.opts.Metrics.downloads.queued(sh.name)
	go fs.run(ctx, f, r, sh)
	return f, nil
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

// Fetch downloads dgst from r's upstream (or joins the download under way)
// and waits for it to end: a cached blob too, unless that upstream has
// sent it before (Options.Sent). The caller has admitted the client.
func (fs *Fetcher) Fetch(ctx context.Context, r Remote, dgst digest.Digest) error {
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
		fs.opts.Metrics.downloads.started(sh.name)
		err = fs.download(ctx, f, r)
		fs.opts.Metrics.downloads.ended(sh.name, running)
		<-fs.slots
		<-sh.slots
	} else {
		fs.opts.Metrics.downloads.ended(sh.name, waiting)
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
	// already published the blob; one from another upstream has too, but
	// only this upstream's bytes show that it holds them.
	_, err := fs.opts.Store.StatBlob(ctx, f.dgst)
	cached := err == nil
	if cached && fs.opts.Sent(ctx, r, f.dgst) {
		return fail(nil)
	}
	body, err := r.GetBlob(ctx, f.dgst)
	if err != nil {
		return fail(err)
	}
	defer body.Close()
	f.answered = true
	fs.opts.OnAnswered(ctx, r, f.dgst)
	in, err := fs.opts.Store.IngestBlob(ctx, f.dgst, body.Size())
	if err != nil {
		return fail(err)
	}
	var spool *os.File
	release, ok := fs.reserveSpool(body.Size())
	if !ok {
		fs.opts.Log.Info("blob download goes to the cache only: its clients wait for all of it", "upstream", r.Upstream(),
			"digest", f.dgst, "size", body.Size(), "spool_limit", fs.limits.SpoolBytes)
	}
	if ok {
		if spool, err = os.CreateTemp(fs.opts.SpoolDir, "regnorm-spool-*"); err != nil {
			release()
			return fail(errors.Join(fmt.Errorf("create spool: %w", err), in.Cancel(ctx)))
		}
		os.Remove(spool.Name()) // lives while open; nothing to clean up after a crash
		f.release = release
	}
	f.size, f.spool = body.Size(), spool
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
	if in.Verify() == nil {
		// Before the blob is published: whoever finds it in the cache
		// finds what the upstream's bytes proved, too.
		fs.opts.OnSent(ctx, r, f.dgst)
		for _, also := range f.takeAlso() {
			fs.opts.OnSent(ctx, also, f.dgst)
		}
	}
	if err := in.Commit(ctx); err != nil {
		return err
	}
	if !cached {
		fs.opts.OnCommit(in.Size())
	}
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
