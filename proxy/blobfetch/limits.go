package blobfetch

import (
	"context"
	"sync"
)

// share is one upstream's part of the limits: its downloads wait for one of
// its own slots before they wait for a global one, so whatever they hold,
// the rest of the global slots stay free for the other upstreams.
type share struct {
	name   string
	slots  chan struct{} // one per running download of this upstream
	active int           // its downloads not yet over, running or waiting
	limit  int           // bound on active
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

// wait waits for a turn to download: first one of the upstream's own
// slots, then a global one. A download waiting for its upstream's slot
// holds no global one.
func (fs *Fetcher) wait(ctx context.Context, sh *share) error {
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
