package proxy

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// reporter keeps the rewrite report. Serving counts accumulate in memory and
// are merged into the cache's entries on every flush, so the hot path never
// waits for storage; list shows stored and pending counts together.
type reporter struct {
	store cache.ReportStore
	clock Clock
	log   *slog.Logger
	// The bounds of the stored entries, together (maxReportEntries and
	// maxReportBytes), and of the pending ones.
	maxEntries int
	maxBytes   int64

	mu      sync.Mutex
	pending map[string]cache.ReportEntry

	// The stored entries as last listed.
	listed *recent[[]cache.ReportEntry]
}

func newReporter(store cache.ReportStore, clock Clock, log *slog.Logger) *reporter {
	return &reporter{store: store, clock: clock, log: log, maxEntries: maxReportEntries, maxBytes: maxReportBytes,
		pending: map[string]cache.ReportEntry{}, listed: newRecent[[]cache.ReportEntry](clock)}
}

// The report keeps at most maxReportEntries entries, together at most
// maxReportBytes as stored (each entry is bounded too: cache.BoundChanges,
// MaxReportTags, MaxReportClients): beyond, the entries written least
// recently go. So its listing, which every page is cut from, is bounded
// in memory however many images and repositories are pulled.
const (
	maxReportEntries = 10000
	maxReportBytes   = 64 << 20
)

// stored lists the stored entries, or reuses a recent listing.
func (r *reporter) stored(ctx context.Context) ([]cache.ReportEntry, error) {
	return r.listed.get(func() ([]cache.ReportEntry, error) { return r.store.ListReports(ctx) })
}

// listingTTL is how long a listing of the store is reused: a status page
// loaded by many at once, or reloaded in a loop, lists the store at most
// once per listingTTL.
const listingTTL = 5 * time.Second

// recent is a listing of the store, reused for listingTTL.
type recent[T any] struct {
	clock Clock
	mu    sync.Mutex
	value T
	at    time.Time
	ok    bool
}

func newRecent[T any](clock Clock) *recent[T] { return &recent[T]{clock: clock} }

// get returns the listing, fetching it anew when it is older than
// listingTTL. Callers at the same moment share one fetch.
func (r *recent[T]) get(fetch func() (T, error)) (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ok && r.clock.Now().Sub(r.at) < listingTTL {
		return r.value, nil
	}
	v, err := fetch()
	if err != nil {
		var zero T
		return zero, err
	}
	r.value, r.at, r.ok = v, r.clock.Now(), true
	return v, nil
}

// forget drops the listing: the store changed.
func (r *recent[T]) forget() {
	r.mu.Lock()
	r.ok = false
	r.mu.Unlock()
}

// Add merges delta into the pending changes of its entry. A new entry
// past maxEntries pending (the store failing to take them) is dropped: the
// next answer adds it again.
func (r *reporter) Add(delta cache.ReportEntry) {
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

// flush merges pending changes into the stored entries. What fails to be
// stored stays pending for the next flush.
func (r *reporter) flush(ctx context.Context) error {
	r.mu.Lock()
	pending := r.pending
	r.pending = map[string]cache.ReportEntry{}
	r.mu.Unlock()

	if len(pending) == 0 {
		return nil
	}
	defer r.listed.forget()
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

// run flushes every interval until ctx ends, then once more.
func (r *reporter) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := r.flush(ctx); err != nil {
				r.log.Warn("flushing the rewrite report failed", "error", err)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := r.flush(fctx); err != nil {
				r.log.Warn("flushing the rewrite report failed", "error", err)
			}
			return
		}
	}
}

// list returns every entry, pending counts included, most recently served first.
func (r *reporter) list(ctx context.Context) ([]cache.ReportEntry, error) {
	stored, err := r.stored(ctx)
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

// visibleReport lists the report as anyone who may read it may see it.
// Entries of upstreams that forward credentials are left out, and counted in
// hidden: the report is not behind those credentials (client authentication
// cannot be combined with forwarding), and they would name private
// repositories, digests and the paths inside private layers.
func (s *Server) visibleReport(ctx context.Context) (entries []cache.ReportEntry, hidden int, err error) {
	all, err := s.reports.list(ctx)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range all {
		if up, ok := s.upstreams[e.Upstream]; ok && up.Forwards() {
			hidden++
			continue
		}
		entries = append(entries, e)
	}
	return entries, hidden, nil
}

// served is the report's record of one answer by tag with the variant of
// original for client's rule set; verdict says what the variant is (none:
// the original itself). The entry is the variant's under the rules that
// apply to the original, which clients with other rule sets may share.
func (s *Server) served(req distRequest, original cache.Manifest, client ruleset.Client, verdict cache.Normalization) cache.ReportEntry {
	now := s.clock.Now().UTC()
	return cache.ReportEntry{Upstream: req.repo.Upstream(), Repository: req.repo.Name(), Original: original.Digest,
		Rules:      reportRules(normalize.Applicable(original, client.Rules)),
		Normalized: verdict.Normalized, Changes: verdict.Changes, UnlistedChanges: verdict.UnlistedChanges, MediaType: verdict.MediaType,
		Tags: []string{req.tag}, Clients: clientNames(client), FirstServed: now, LastServed: now, TimesServed: 1}
}

// reportRules names a rule set in the report: its key, or "none" (report
// entries written before rule sets have none at all).
func reportRules(rules ruleset.Set) string {
	if rules.Empty() {
		return "none"
	}
	return rules.Key()
}

// originalLookups bounds the lookups noteOriginalServed runs at once;
// beyond, a serve goes unrecorded.
const originalLookups = 4

// noteOriginalServed records, for an original that some clients get fixed,
// that this client got it as it is: the report shows every variant an
// original has, and who was served which. The lookup runs beside the
// request, never in its way (nor in the way of the next request on its
// connection); known verdicts are remembered.
func (s *Server) noteOriginalServed(ctx context.Context, req distRequest, m cache.Manifest, client ruleset.Client) {
	if !normalize.MayNeed(m, s.rules.Enabled) {
		return
	}
	entry := s.served(req, m, client, cache.Normalization{})
	if changed, ok := s.changedOriginals.Get(m.Digest); ok {
		if changed {
			s.reports.Add(entry)
		}
		return
	}
	select {
	case s.lookups <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-s.lookups }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// Rules only add changes: the original changes for some client
		// exactly when it changes under every enabled rule.
		n, ok := s.mirror.Verdict(ctx, m, s.rules.Enabled)
		if !ok {
			return
		}
		s.changedOriginals.Add(m.Digest, n.Normalized != "")
		if n.Normalized != "" {
			s.reports.Add(entry)
		}
	}()
}

// clientNames is how the report names a client.
func clientNames(c ruleset.Client) []string {
	if c.Version == "" {
		return []string{"unidentified"}
	}
	return []string{c.Version}
}

// noteDigestPull handles a pull by digest: it always gets the bytes it
// names (containerd verifies them). If those are an original that regnorm
// normalizes, the pull cannot be fixed: count it, say which digest to pin
// instead, and put it in the report. Only a verdict already known counts:
// a pull by digest never makes regnorm download what nobody asked for (for
// an index, that would be every platform's layers).
// It reports whether the pull was one of an original that regnorm
// normalizes for this client's rules: a node that needs no rule pulls the
// original by design.
func (s *Server) noteDigestPull(ctx context.Context, req distRequest, m cache.Manifest, client ruleset.Client) bool {
	n, ok := s.mirror.Verdict(ctx, m, client.Rules)
	if !ok || n.Normalized == "" {
		return false
	}
	s.metrics.unnormalizedPulls.Inc()
	s.reports.Add(cache.ReportEntry{Upstream: req.repo.Upstream(), Repository: req.repo.Name(), Original: m.Digest,
		Rules:      reportRules(normalize.Applicable(m, client.Rules)),
		Normalized: n.Normalized, MediaType: n.MediaType, Changes: n.Changes, UnlistedChanges: n.UnlistedChanges, // the digest to pin instead
		UnnormalizedPulls: 1, LastUnnormalizedPull: s.clock.Now().UTC()})
	s.log.Warn("pull by an original digest gets the unnormalized image; pin the normalized digest instead",
		"upstream", req.repo.Upstream(), "repo", req.repo.Name(), "digest", m.Digest, "normalized", n.Normalized)
	logAttrs(ctx, slog.Bool("unnormalized", true), slog.String("normalized", n.Normalized.String()))
	return true
}
