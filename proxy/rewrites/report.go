package rewrites

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/recent"
)

// The report keeps at most maxEntries entries, together at most maxBytes
// as stored (each entry is bounded too: cache.BoundChanges, MaxReportTags,
// MaxReportClients): beyond, the entries written least recently go. So its
// listing, which every page is cut from, is bounded in memory however many
// images and repositories are pulled.
const (
	maxEntries = 10000
	maxBytes   = 64 << 20
)

// FlushInterval is how often served counts reach the stored report.
const FlushInterval = 10 * time.Second

// Options configure a Report. Every field is required.
type Options struct {
	Store cache.ReportStore
	Now   func() time.Time
	// Shown reports whether List may show an upstream's entries: those of
	// an upstream configured without forwarded credentials. It fails
	// closed: entries of an upstream that forwards, or that is no longer
	// configured (renamed, removed: the cache keeps its entries), are
	// hidden.
	Shown func(upstream string) bool
	Log   *slog.Logger
}

// Report is the rewrite report.
type Report struct {
	store cache.ReportStore
	now   func() time.Time
	shown func(string) bool
	log   *slog.Logger
	// The bounds of the stored entries, together, and of the pending ones.
	maxEntries int
	maxBytes   int64

	mu      sync.Mutex
	pending map[string]cache.ReportEntry

	// The stored entries as last listed.
	listed *recent.Listing[[]cache.ReportEntry]

	changedOriginals *lru.Cache[digest.Digest, bool] // whether every enabled rule changes an original
	lookups          chan struct{}                   // ServedOriginal's, at most originalLookups
	pulled           *lru.Cache[string, pulled]      // Pulled's, by upstream, repository and original; under mu
}

// New builds an empty report over opts.Store.
func New(opts Options) *Report {
	changed, err := lru.New[digest.Digest, bool](1 << 14)
	if err != nil {
		panic(err)
	}
	pulledImages, err := lru.New[string, pulled](maxPulled)
	if err != nil {
		panic(err)
	}
	return &Report{pulled: pulledImages, store: opts.Store, now: opts.Now, shown: opts.Shown, log: opts.Log, maxEntries: maxEntries, maxBytes: maxBytes,
		pending: map[string]cache.ReportEntry{}, listed: recent.New[[]cache.ReportEntry](opts.Now),
		changedOriginals: changed, lookups: make(chan struct{}, originalLookups)}
}

// Add merges delta into the pending changes of its entry. A new entry
// past maxEntries pending (the store failing to take them) is dropped: the
// next answer adds it again.
func (r *Report) Add(delta cache.ReportEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := delta.Key()
	e, ok := r.pending[key]
	if !ok {
		if len(r.pending) >= r.maxEntries {
			return
		}
		e = identity(delta)
	}
	e.Merge(delta)
	r.pending[key] = e
}

func identity(e cache.ReportEntry) cache.ReportEntry {
	return cache.ReportEntry{Upstream: e.Upstream, Repository: e.Repository, Original: e.Original, Rules: e.Rules}
}

// Flush merges pending changes into the stored entries. What fails to be
// stored stays pending for the next flush.
func (r *Report) Flush(ctx context.Context) error {
	r.mu.Lock()
	pending := r.pending
	r.pending = map[string]cache.ReportEntry{}
	r.mu.Unlock()

	if len(pending) == 0 {
		return nil
	}
	defer r.listed.Forget()
	var errs []error
	created := false
	for key, delta := range pending {
		cur, err := r.store.GetReport(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			cur, err, created = identity(delta), nil, true
		}
		if err == nil {
			cur.Merge(delta)
			err = r.store.PutReport(ctx, cur)
		}
		if err != nil {
			errs = append(errs, err)
			r.Add(delta)
		}
	}
	if created {
		// Only a new entry makes the report grow: each is bounded.
		n, err := r.store.PruneReports(ctx, r.maxEntries, r.maxBytes)
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			r.log.Info("rewrite report full: removed the entries written least recently", "removed", n,
				"max_entries", r.maxEntries, "max_bytes", r.maxBytes)
		}
	}
	return errors.Join(errs...)
}

// Run flushes every FlushInterval until ctx ends, then once more.
func (r *Report) Run(ctx context.Context) {
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := r.Flush(ctx); err != nil {
				r.log.Warn("flushing the rewrite report failed", "error", err)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				r.log.Warn("flushing the rewrite report failed", "error", err)
			}
			return
		}
	}
}

// all returns every entry, pending counts included, most recently served
// first.
func (r *Report) all(ctx context.Context) ([]cache.ReportEntry, error) {
	stored, err := r.listed.Get(func() ([]cache.ReportEntry, error) { return r.store.ListReports(ctx) })
	if err != nil {
		return nil, err
	}
	byKey := map[string]cache.ReportEntry{}
	for _, e := range stored {
		byKey[e.Key()] = e
	}
	r.mu.Lock()
	for key, delta := range r.pending {
		e, ok := byKey[key]
		if !ok {
			e = identity(delta)
		}
		e.Merge(delta)
		byKey[key] = e
	}
	r.mu.Unlock()
	out := make([]cache.ReportEntry, 0, len(byKey))
	for _, e := range byKey {
		if e.Tags == nil {
			e.Tags = []string{} // an index child, served only by digest
		}
		if e.Clients == nil {
			e.Clients = []string{}
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b cache.ReportEntry) int {
		if c := b.LastServed.Compare(a.LastServed); c != 0 {
			return c
		}
		return strings.Compare(a.Key(), b.Key())
	})
	return out, nil
}

// List lists the report as anyone who may read it may see it, most
// recently served first. Entries Options.Shown does not show are left out,
// and counted in hidden: the report is not behind forwarded credentials
// (client authentication cannot be combined with forwarding), and they
// would name private repositories, digests and the paths inside private
// layers.
func (r *Report) List(ctx context.Context) (entries []cache.ReportEntry, hidden int, err error) {
	all, err := r.all(ctx)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range all {
		if !r.shown(e.Upstream) {
			hidden++
			continue
		}
		entries = append(entries, e)
	}
	return entries, hidden, nil
}
