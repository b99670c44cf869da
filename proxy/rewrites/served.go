package rewrites

import (
	"context"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// Answer is one manifest answer, as the report records it: where it was
// served from, the original it was made from, and the client it went to.
type Answer struct {
	Upstream, Repository string
	// Tag is the tag it was asked for by; empty for a pull by digest.
	Tag      string
	Original cache.Manifest
	Client   ruleset.Client
}

// Served records an answer by tag with the variant of the original for the
// client's rule set; verdict says what the variant is (none: the original
// itself). The entry is the variant's under the rules that apply to the
// original, which clients with other rule sets may share.
func (r *Report) Served(a Answer, verdict cache.Normalization) {
	r.Add(r.served(a, verdict))
}

func (r *Report) served(a Answer, verdict cache.Normalization) cache.ReportEntry {
	now := r.now().UTC()
	return cache.ReportEntry{Upstream: a.Upstream, Repository: a.Repository, Original: a.Original.Digest,
		Rules:      rulesName(normalize.Applicable(a.Original, a.Client.Rules)),
		Normalized: verdict.Normalized, Changes: verdict.Changes, UnlistedChanges: verdict.UnlistedChanges, MediaType: verdict.MediaType,
		Tags: []string{a.Tag}, Clients: clientNames(a.Client), FirstServed: now, LastServed: now, TimesServed: 1}
}

// originalLookups bounds the lookups ServedOriginal runs at once; beyond,
// an answer goes unrecorded.
const originalLookups = 4

// Verdict says what the rules make of an original, when that is known (the
// rule engine's Verdict).
type Verdict func(ctx context.Context, m cache.Manifest, rules ruleset.Set) (cache.Normalization, bool)

// ServedOriginal records, for an original that some clients get fixed,
// that this client got it as it is by tag: the report shows every variant
// an original has, and who was served which. enabled are the rules that
// are on. The lookup runs beside the request, never in its way (nor in the
// way of the next request on its connection); known verdicts are
// remembered.
func (r *Report) ServedOriginal(ctx context.Context, a Answer, enabled ruleset.Set, verdict Verdict) {
	if !normalize.MayNeed(a.Original, enabled) {
		return
	}
	entry := r.served(a, cache.Normalization{})
	if changed, ok := r.changedOriginals.Get(a.Original.Digest); ok {
		if changed {
			r.Add(entry)
		}
		return
	}
	select {
	case r.lookups <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-r.lookups }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		// Rules only add changes: the original changes for some client
		// exactly when it changes under every enabled rule.
		n, ok := verdict(ctx, a.Original, enabled)
		if !ok {
			return
		}
		r.changedOriginals.Add(a.Original.Digest, n.Normalized != "")
		if n.Normalized != "" {
			r.Add(entry)
		}
	}()
}

// PulledOriginal records a pull by the digest of an original that the
// client's rules change (as n says): it cannot be fixed, and the entry
// names the digest to pin instead.
func (r *Report) PulledOriginal(a Answer, n cache.Normalization) {
	r.Add(cache.ReportEntry{Upstream: a.Upstream, Repository: a.Repository, Original: a.Original.Digest,
		Rules:      rulesName(normalize.Applicable(a.Original, a.Client.Rules)),
		Normalized: n.Normalized, MediaType: n.MediaType, Changes: n.Changes, UnlistedChanges: n.UnlistedChanges,
		UnnormalizedPulls: 1, LastUnnormalizedPull: r.now().UTC()})
}

// rulesName names a rule set in the report: its key, or "none" (report
// entries written before rule sets have none at all).
func rulesName(rules ruleset.Set) string {
	if rules.Empty() {
		return "none"
	}
	return rules.Key()
}

// clientNames is how the report names a client.
func clientNames(c ruleset.Client) []string {
	if c.Version == "" {
		return []string{"unidentified"}
	}
	return []string{c.Version}
}
