package rewrites

import (
	"context"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// maxPulled bounds the originals answered by tag that the report remembers
// beside its entries (Pulled): an image served as it is to clients it is
// clean for makes no entry, yet another containerd version may need a
// variant of it.
const maxPulled = 10000

// pulled is an original answered by tag, as Pulled remembers it.
type pulled struct {
	upstream, repository string
	original             digest.Digest
	tags                 []string
	last                 time.Time
}

// Pulled remembers that a's original was answered by tag, when some enabled
// rule may change it (normalize.MayNeed): the images pulled through this
// replica since it started, the most recent maxPulled of them, whether or
// not a variant of them was ever served. Upgrade readiness lists them with
// the report's entries (Originals).
func (r *Report) Pulled(a Answer, enabled ruleset.Set) {
	if a.Tag == "" || !normalize.MayNeed(a.Original, enabled) {
		return
	}
	key := a.Upstream + "/" + a.Repository + "@" + a.Original.Digest.String()
	now := r.now().UTC()
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pulled.Get(key)
	if !ok {
		p = pulled{upstream: a.Upstream, repository: a.Repository, original: a.Original.Digest}
	}
	tags := slices.DeleteFunc(slices.Clone(p.tags), func(t string) bool { return t == a.Tag })
	tags = append(tags, a.Tag)
	p.tags, p.last = tags[len(tags)-min(len(tags), cache.MaxReportTags):], now
	r.pulled.Add(key, p)
}

// Original is an image regnorm answered: an original of the report's
// entries, or one Pulled remembers.
type Original struct {
	Upstream, Repository string
	Digest               digest.Digest
	// Tags it was answered by, most recent last (cache.MaxReportTags at
	// most); none for an index child, answered by digest only.
	Tags []string
	// Last is when it was last served.
	Last time.Time
}

// Originals lists the originals of the report's entries and those Pulled
// remembers, each once, most recently served first: at most maxEntries +
// maxPulled. Those Options.Shown does not show are left out and counted in
// hidden, as List does.
func (r *Report) Originals(ctx context.Context) (originals []Original, hidden int, err error) {
	all, err := r.all(ctx)
	if err != nil {
		return nil, 0, err
	}
	byKey := map[string]*Original{}
	add := func(up, repo string, dgst digest.Digest, tags []string, last time.Time) {
		key := up + "/" + repo + "@" + dgst.String()
		o, ok := byKey[key]
		if !ok {
			o = &Original{Upstream: up, Repository: repo, Digest: dgst, Tags: []string{}}
			byKey[key] = o
		}
		for _, t := range tags {
			if !slices.Contains(o.Tags, t) && len(o.Tags) < cache.MaxReportTags {
				o.Tags = append(o.Tags, t)
			}
		}
		if last.After(o.Last) {
			o.Last = last
		}
	}
	for _, e := range all {
		add(e.Upstream, e.Repository, e.Original, e.Tags, e.LastServed)
	}
	r.mu.Lock()
	for _, p := range r.pulled.Values() {
		add(p.upstream, p.repository, p.original, p.tags, p.last)
	}
	r.mu.Unlock()
	for _, o := range byKey {
		if !r.shown(o.Upstream) {
			hidden++
			continue
		}
		originals = append(originals, *o)
	}
	slices.SortFunc(originals, func(a, b Original) int {
		if c := b.Last.Compare(a.Last); c != 0 {
			return c
		}
		return strings.Compare(a.Upstream+"/"+a.Repository+"@"+a.Digest.String(), b.Upstream+"/"+b.Repository+"@"+b.Digest.String())
	})
	return originals, hidden, nil
}
