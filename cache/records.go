package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/internal/mediatype"
)

// Change is one recorded normalization change (the cache's copy of what
// the rewrite package reports; cache does not import rewrite).
type Change struct {
	Kind    string   `json:"kind"`
	Path    string   `json:"path"`
	Old     string   `json:"old"`
	New     string   `json:"new"`
	Details []string `json:"details,omitempty"`
	// Unlisted is how many more details there were than Details lists.
	Unlisted int `json:"unlisted,omitempty"`
}

// What a record keeps of its changes. Changes and their details come from
// image content (one change or note per layer, a layer's paths and xattr
// keys), and records are read whole into memory, answers and pages: rewrite
// bounds what one layer lists, and these bound a record of up to thousands
// of layers, and records written before either bound.
const (
	// maxChanges bounds the changes one record lists.
	maxChanges = 100
	// maxDetailBytes bounds the details of one record, together.
	maxDetailBytes = 64 << 10
	// maxDetailLine bounds one line of details.
	maxDetailLine = 2 << 10
)

// BoundChanges returns cs with at most maxChanges changes (the first
// ones), at most maxDetailBytes of details in all, no line longer than
// maxDetailLine: the lines beyond, in order, are left out and counted in
// their change's Unlisted. It returns too how many changes it left out.
// The same changes always keep the same lines; cs itself is not modified.
func BoundChanges(cs []Change) ([]Change, int) {
	cut := 0
	if len(cs) > maxChanges {
		cs, cut = cs[:maxChanges:maxChanges], len(cs)-maxChanges
	}
	if withinBounds(cs) {
		return cs, cut
	}
	out := slices.Clone(cs)
	budget := maxDetailBytes
	for i, c := range out {
		var kept []string
		for j, d := range c.Details {
			if len(d) > maxDetailLine || len(d) > budget {
				// The list ends here: what follows is counted, not shown.
				budget = 0
				c.Unlisted += len(c.Details) - j
				break
			}
			budget -= len(d)
			kept = append(kept, d)
		}
		c.Details = kept
		out[i] = c
	}
	return out, cut
}

func withinBounds(cs []Change) bool {
	n := 0
	for _, c := range cs {
		for _, d := range c.Details {
			if len(d) > maxDetailLine {
				return false
			}
			n += len(d)
		}
	}
	return n <= maxDetailBytes
}

// Normalization is the verdict for one original manifest or index under one
// rule set: it needs nothing (Normalized is empty), or its variant for that
// set is Normalized. It depends only on content and rules, so it is keyed by
// the original digest and the set, and holds for every repository, replica
// and restart.
type Normalization struct {
	Original   digest.Digest `json:"original"`
	Normalized digest.Digest `json:"normalized,omitempty"`
	// MediaType is the variant's: Normalized's when set, else Original's.
	MediaType string   `json:"mediaType"`
	Changes   []Change `json:"changes,omitempty"`
	// UnlistedChanges counts the changes beyond those Changes lists.
	UnlistedChanges int `json:"unlistedChanges,omitempty"`
	// Rules is the key of the rule set the verdict is for.
	Rules string `json:"rules"`
	// Limited, when set, are the limits under which a layer the verdict
	// depends on (its own, or a child's) was left untouched: under larger
	// limits the verdict is made again.
	Limited   LayerLimits `json:"limited,omitzero"`
	CreatedAt time.Time   `json:"createdAt"`
}

// LayerLimits are limits a layer was left untouched under: ZstdWindow for
// a layer whose zstd frames declare a larger window, LayerSize for one
// that decompresses further. Zero: no layer was left for that limit.
type LayerLimits struct {
	ZstdWindow int64 `json:"zstdWindow,omitempty"`
	LayerSize  int64 `json:"layerSize,omitempty"`
}

// RaisedBy reports whether current raises a limit l records: a layer left
// untouched under l may be read under current.
func (l LayerLimits) RaisedBy(current LayerLimits) bool {
	return l.ZstdWindow > 0 && current.ZstdWindow > l.ZstdWindow || l.LayerSize > 0 && current.LayerSize > l.LayerSize
}

// Min is the lower of each limit that l and o record: the first of them to
// be raised decides.
func (l LayerLimits) Min(o LayerLimits) LayerLimits {
	lower := func(a, b int64) int64 {
		if a == 0 || b > 0 && b < a {
			return b
		}
		return a
	}
	return LayerLimits{ZstdWindow: lower(l.ZstdWindow, o.ZstdWindow), LayerSize: lower(l.LayerSize, o.LayerSize)}
}

// Derived kinds: content regnorm made, which upstream does not have.
const (
	// DerivedLayer is a repackaged layer: rebuilt from its Source layer if
	// evicted (repackaging is deterministic, and the rebuild is verified
	// against the digest).
	DerivedLayer = "layer"
	// DerivedConfig is a rewritten config: small, and retained (never
	// evicted).
	DerivedConfig = "config"
	// DerivedManifest is a normalized manifest or index. Manifests are never
	// evicted.
	DerivedManifest = "manifest"
)

// Derived records what a blob or manifest regnorm made was made from.
type Derived struct {
	Digest digest.Digest `json:"digest"`
	Kind   string        `json:"kind"`
	// Source is the upstream blob or manifest it was made from: a client
	// may read it under a repository only where that repository holds the
	// source upstream.
	Source digest.Digest `json:"source"`
	// FromManifest says Source is a manifest for a blob made from one (the
	// config of a converted schema 1 manifest). A derived manifest's source
	// is always a manifest.
	FromManifest bool `json:"fromManifest,omitempty"`
	// Transform, for a layer, is how it was made from Source (a
	// rewrite.LayerTransform key; empty: the symlink rule's repackaging).
	Transform string `json:"transform,omitempty"`
	// Also are the other ways the same bytes were made: two upstream layers
	// can repackage to one (they differ only in what a rule strips). A
	// repository may read d where it holds any of the sources.
	Also []Origin `json:"also,omitempty"`
}

// Origin is one way a derived object was made: from Source, as Transform
// says.
type Origin struct {
	Source       digest.Digest `json:"source"`
	FromManifest bool          `json:"fromManifest,omitempty"`
	Transform    string        `json:"transform,omitempty"`
}

// maxOrigins bounds the ways one derived object is recorded as made.
const maxOrigins = 16

// Origins are the ways d was made, the first recorded first.
func (d Derived) Origins() []Origin {
	return append([]Origin{{Source: d.Source, FromManifest: d.FromManifest, Transform: d.Transform}}, d.Also...)
}

// From is d made as o says (o one of d's Origins).
func (d Derived) From(o Origin) Derived {
	d.Source, d.FromManifest, d.Transform, d.Also = o.Source, o.FromManifest, o.Transform, nil
	return d
}

// SourceIsManifest reports whether d.Source is a manifest (else a blob).
func (d Derived) SourceIsManifest() bool { return d.Kind == DerivedManifest || d.FromManifest }

// DerivedStore reads and writes derived records.
type DerivedStore interface {
	PutDerived(ctx context.Context, d Derived) error
	GetDerived(ctx context.Context, dgst digest.Digest) (Derived, error)
}

// PutDerived records how d.Digest was made. When it was recorded as made
// another way, that stays, and this way is added (up to maxOrigins).
func (s *Store) PutDerived(ctx context.Context, d Derived) error {
	if err := errors.Join(d.Digest.Validate(), d.Source.Validate()); err != nil {
		return fmt.Errorf("put derived %q: %w", d.Digest, err)
	}
	switch old, err := s.GetDerived(ctx, d.Digest); {
	case err == nil && old.Kind != d.Kind:
		return nil // kinds never share bytes: keep what is recorded
	case err == nil:
		o := Origin{Source: d.Source, FromManifest: d.FromManifest, Transform: d.Transform}
		if slices.Contains(old.Origins(), o) || len(old.Also)+1 >= maxOrigins {
			return nil
		}
		old.Also = append(old.Also, o)
		d = old
	case !errors.Is(err, ErrNotFound) && !errors.Is(err, errBadRecord):
		return fmt.Errorf("put derived %s: %w", d.Digest, err) // never drop the ways recorded
	}
	if err := s.putJSON(ctx, derivedPath(d.Digest), d); err != nil {
		return fmt.Errorf("put derived %s: %w", d.Digest, err)
	}
	return nil
}

// GetDerived returns how dgst was made, if regnorm made it.
func (s *Store) GetDerived(ctx context.Context, dgst digest.Digest) (Derived, error) {
	if err := dgst.Validate(); err != nil {
		return Derived{}, fmt.Errorf("get derived %q: %w", dgst, err)
	}
	var d Derived
	if err := s.getJSON(ctx, derivedPath(dgst), &d); err != nil {
		return Derived{}, fmt.Errorf("get derived %s: %w", dgst, err)
	}
	if d.Digest != dgst || d.Source.Validate() != nil {
		return Derived{}, fmt.Errorf("get derived %s: %w: it is for %s from %q", dgst, errBadRecord, d.Digest, d.Source)
	}
	return d, nil
}

// NormalizationStore reads and writes normalization verdicts.
type NormalizationStore interface {
	GetNormalization(ctx context.Context, original digest.Digest, rules string) (Normalization, error)
	PutNormalization(ctx context.Context, n Normalization) error
}

// ReportEntry is what the rewrite report shows for one normalized manifest
// or index of one repository.
type ReportEntry struct {
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
	Tags       []string      `json:"tags"`
	MediaType  string        `json:"mediaType"`
	Original   digest.Digest `json:"originalDigest"`
	// Rules is the key of the rule set of this variant of Original.
	Rules string `json:"rules"`
	// Normalized is the variant's digest; empty when the variant is the
	// original itself (its clients need none of the rules that change it).
	Normalized digest.Digest `json:"normalizedDigest,omitempty"`
	Changes    []Change      `json:"changes"`
	// UnlistedChanges counts the changes beyond those Changes lists.
	UnlistedChanges int `json:"unlistedChanges,omitempty"`
	// Clients are the containerd versions this variant was served to
	// ("unidentified" for a client that names none): the MaxReportClients
	// most recent, most recent last.
	Clients []string `json:"clients"`
	// FirstServed and LastServed bound the normalized answers given.
	FirstServed time.Time `json:"firstServed,omitzero"`
	LastServed  time.Time `json:"lastServed,omitzero"`
	TimesServed int64     `json:"timesServed"`
	// UnnormalizedPulls counts pulls by the original digest, which get the
	// original, unfixed bytes.
	UnnormalizedPulls    int64     `json:"unnormalizedPulls"`
	LastUnnormalizedPull time.Time `json:"lastUnnormalizedPull,omitzero"`
}

// MaxReportClients bounds the client versions an entry lists.
const MaxReportClients = 16

// MaxReportTags bounds the tags an entry lists: an upstream may answer any
// tag with the same image.
const MaxReportTags = 32

// Key identifies the entry: one per upstream, repository, original digest
// and rule set.
func (e ReportEntry) Key() string {
	return e.Upstream + "/" + e.Repository + "@" + e.Original.String() + " rules=" + e.Rules
}

// mostRecent is have with recent moved or added to its end, cut to the
// last max: a list kept in the order its values were last seen.
func mostRecent(have, recent []string, max int) []string {
	out := slices.Clone(have)
	for _, v := range recent {
		out = append(slices.DeleteFunc(out, func(h string) bool { return h == v }), v)
	}
	return out[len(out)-min(len(out), max):]
}

// Merge adds other's counts and times to e. Identity fields are taken from
// other when set.
func (e *ReportEntry) Merge(other ReportEntry) {
	if other.Normalized != "" || len(other.Changes) > 0 {
		// A variant, or the notes of an original served as it is (a layer
		// left untouched).
		e.Normalized, e.MediaType, e.Changes, e.UnlistedChanges = other.Normalized, other.MediaType, other.Changes, other.UnlistedChanges
	}
	// New slices: e's may be shared with a listing someone else holds.
	// Most recently served last; past the bound, the least recent go.
	e.Tags = mostRecent(e.Tags, other.Tags, MaxReportTags)
	e.Clients = mostRecent(e.Clients, other.Clients, MaxReportClients)
	if !other.FirstServed.IsZero() && (e.FirstServed.IsZero() || other.FirstServed.Before(e.FirstServed)) {
		e.FirstServed = other.FirstServed
	}
	if other.LastServed.After(e.LastServed) {
		e.LastServed = other.LastServed
	}
	if other.LastUnnormalizedPull.After(e.LastUnnormalizedPull) {
		e.LastUnnormalizedPull = other.LastUnnormalizedPull
	}
	e.TimesServed += other.TimesServed
	e.UnnormalizedPulls += other.UnnormalizedPulls
}

// ReportStore reads and writes report entries.
type ReportStore interface {
	GetReport(ctx context.Context, key string) (ReportEntry, error)
	PutReport(ctx context.Context, e ReportEntry) error
	ListReports(ctx context.Context) ([]ReportEntry, error)
	PruneReports(ctx context.Context, maxEntries int, maxBytes int64) (int, error)
}

// XattrRemoval is the xattr keys stripped from one tar entry, as a layer's
// record lists them (rewrite bounds the paths, keys and their number).
type XattrRemoval struct {
	Path     string   `json:"path"`
	Keys     []string `json:"keys"`
	MoreKeys int      `json:"moreKeys,omitempty"`
}

// LayerVerdict is what scanning one original layer found: whether it has
// xattrs the symlink rule strips (its repackaged form is then Repacked) and
// GNU sparse entries, and the repackagings made of it (Made). Keyed by the
// layer's digest alone, so a base layer is scanned once for the whole
// cluster.
type LayerVerdict struct {
	Original    digest.Digest `json:"original"`
	Compression string        `json:"compression"`
	Entries     int           `json:"entries"`
	// OriginalDiffID is the diff ID of the original layer, as its scan
	// computed it (empty in verdicts written before scans did).
	OriginalDiffID digest.Digest `json:"originalDiffID,omitempty"`
	Repacked       digest.Digest `json:"repacked,omitempty"`
	Size           int64         `json:"size,omitempty"`
	DiffID         digest.Digest `json:"diffID,omitempty"`
	// Removals lists the first entries repackaging stripped; Unlisted
	// counts the others.
	Removals []XattrRemoval `json:"removals,omitempty"`
	Unlisted int            `json:"unlisted,omitempty"`
	// Skipped, when set, is why the layer was left untouched: not read
	// whole (not-tar, too-large, zstd-window), or repackaged it would be
	// beyond the bound of a layer regnorm makes (amplifies, too-large).
	Skipped string `json:"skipped,omitempty"`
	// Limit, for a layer skipped for a limit (too-large, zstd-window), is
	// that limit as it was when the layer was judged: under a larger one it
	// is judged again.
	Limit int64 `json:"limit,omitempty"`
	// Scan is the version of the scan that made the verdict: 0 for one made
	// before scans counted GNU sparse entries, whose Sparse says nothing.
	Scan int `json:"scan,omitempty"`
	// Sparse counts the layer's GNU sparse entries (typeflag 'S');
	// Expanded lists the first of their paths (rewrite bounds them), and
	// the others are Sparse's rest.
	Sparse   int      `json:"sparse,omitempty"`
	Expanded []string `json:"expanded,omitempty"`
	// Made are the layer's repackagings other than the symlink rule's
	// (Repacked), one for each transform a rule set asked for (the sparse
	// rule's, or a recompression with one of them), made when first asked.
	Made      []MadeLayer `json:"made,omitempty"`
	CreatedAt time.Time   `json:"createdAt"`
}

// MadeLayer is one repackaging of a layer, or why there is none.
type MadeLayer struct {
	// Transform is how it is made (a rewrite.LayerTransform key).
	Transform string        `json:"transform"`
	Digest    digest.Digest `json:"digest,omitempty"`
	Size      int64         `json:"size,omitempty"`
	DiffID    digest.Digest `json:"diffID,omitempty"`
	// Skipped and Limit, when set, say why this repackaging was not made
	// (amplifies, too-large), as the verdict's own do for the layer.
	Skipped string `json:"skipped,omitempty"`
	Limit   int64  `json:"limit,omitempty"`
}

// LayerVerdictStore reads and writes layer verdicts.
type LayerVerdictStore interface {
	GetLayerVerdict(ctx context.Context, layer digest.Digest) (LayerVerdict, error)
	PutLayerVerdict(ctx context.Context, v LayerVerdict) error
}

var (
	_ DerivedStore       = (*Store)(nil)
	_ NormalizationStore = (*Store)(nil)
	_ ReportStore        = (*Store)(nil)
	_ LayerVerdictStore  = (*Store)(nil)
)

// GetLayerVerdict returns the verdict recorded for a layer.
func (s *Store) GetLayerVerdict(ctx context.Context, layer digest.Digest) (LayerVerdict, error) {
	if err := layer.Validate(); err != nil {
		return LayerVerdict{}, fmt.Errorf("get layer verdict %q: %w", layer, err)
	}
	var v LayerVerdict
	if err := s.getJSON(ctx, layerVerdictPath(layer), &v); err != nil {
		return LayerVerdict{}, fmt.Errorf("get layer verdict %s: %w", layer, err)
	}
	if v.Original != layer {
		return LayerVerdict{}, fmt.Errorf("get layer verdict %s: record is for %s", layer, v.Original)
	}
	return v, nil
}

// PutLayerVerdict records a verdict. A verdict never points at a layer
// that cannot be had: each repackaging it names is in the cache, or was
// evicted and can be rebuilt from its original (its derived record says
// how). A made layer that is neither is left out of the record, to be made
// again when a rule set next asks for it; a symlink repackaging that is
// neither is an error.
func (s *Store) PutLayerVerdict(ctx context.Context, v LayerVerdict) error {
	if err := v.Original.Validate(); err != nil {
		return fmt.Errorf("put layer verdict %q: %w", v.Original, err)
	}
	if v.Repacked != "" {
		if err := s.rebuildable(ctx, v.Repacked); err != nil {
			return fmt.Errorf("put layer verdict %s: repacked blob: %w", v.Original, err)
		}
	}
	var made []MadeLayer
	for _, m := range v.Made {
		if m.Digest != "" {
			if err := s.rebuildable(ctx, m.Digest); errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return fmt.Errorf("put layer verdict %s: %s blob: %w", v.Original, m.Transform, err)
			}
		}
		made = append(made, m)
	}
	v.Made = made
	return s.putJSON(ctx, layerVerdictPath(v.Original), v)
}

// rebuildable is nil when the layer dgst is in the cache, or was evicted
// and has the derived record it is rebuilt from; ErrNotFound when neither.
func (s *Store) rebuildable(ctx context.Context, dgst digest.Digest) error {
	_, err := s.StatBlob(ctx, dgst)
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	d, derr := s.GetDerived(ctx, dgst)
	switch {
	case derr == nil && d.Kind == DerivedLayer:
		return nil
	case derr == nil || errors.Is(derr, ErrNotFound):
		return err
	}
	return derr
}

func reportPath(key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return path.Join("/reports", h[:2], h)
}

// GetNormalization returns the verdict recorded for original under the
// rule set whose key is rules.
func (s *Store) GetNormalization(ctx context.Context, original digest.Digest, rules string) (Normalization, error) {
	if err := original.Validate(); err != nil {
		return Normalization{}, fmt.Errorf("get normalization %q: %w", original, err)
	}
	p, err := normalizationPath(original, rules)
	if err != nil {
		return Normalization{}, fmt.Errorf("get normalization %s: %w", original, err)
	}
	var n Normalization
	if err := s.getJSON(ctx, p, &n); err != nil {
		return Normalization{}, fmt.Errorf("get normalization %s [%s]: %w", original, rules, err)
	}
	if n.Original != original || n.Rules != rules {
		return Normalization{}, fmt.Errorf("get normalization %s [%s]: record is for %s [%s]", original, rules, n.Original, n.Rules)
	}
	n.bound() // a record written before the bound
	return n, nil
}

// PutNormalization records a verdict. A normalized manifest must already be
// in the cache: a verdict never points at content that is not there.
func (s *Store) PutNormalization(ctx context.Context, n Normalization) error {
	if err := n.Original.Validate(); err != nil {
		return fmt.Errorf("put normalization %q: %w", n.Original, err)
	}
	p, err := normalizationPath(n.Original, n.Rules)
	if err != nil {
		return fmt.Errorf("put normalization %s: %w", n.Original, err)
	}
	if n.Normalized != "" {
		if _, err := s.driver.Stat(ctx, manifestPath(n.Normalized)); err != nil {
			return fmt.Errorf("put normalization %s: normalized manifest %s: %w", n.Original, n.Normalized, notFound(err))
		}
	}
	n.bound()
	return s.putJSON(ctx, p, n)
}

// GetReport returns the entry with key.
func (s *Store) GetReport(ctx context.Context, key string) (ReportEntry, error) {
	var e ReportEntry
	if err := s.getJSON(ctx, reportPath(key), &e); err != nil {
		return ReportEntry{}, fmt.Errorf("get report %s: %w", key, err)
	}
	boundReport(&e)
	return e, nil
}

// bound bounds what n holds from image content.
func (n *Normalization) bound() {
	var cut int
	n.Changes, cut = BoundChanges(n.Changes)
	n.UnlistedChanges += cut
}

// boundReport bounds what e holds from image content and upstream answers,
// in a record written before the bounds.
func boundReport(e *ReportEntry) {
	var cut int
	e.Changes, cut = BoundChanges(e.Changes)
	e.UnlistedChanges += cut
	if len(e.Tags) > MaxReportTags {
		e.Tags = e.Tags[:MaxReportTags]
	}
	if len(e.Clients) > MaxReportClients {
		e.Clients = e.Clients[len(e.Clients)-MaxReportClients:]
	}
}

// PutReport writes e under its key.
func (s *Store) PutReport(ctx context.Context, e ReportEntry) error {
	boundReport(&e)
	if err := s.putJSON(ctx, reportPath(e.Key()), e); err != nil {
		return fmt.Errorf("put report %s: %w", e.Key(), err)
	}
	return nil
}

// ListReports returns every report entry. Entries are remembered with the
// time they were written, so a listing reads only the entries written since
// the last one: on S3 it costs one LIST request per 1000 entries, plus a GET
// per changed entry.
func (s *Store) ListReports(ctx context.Context) ([]ReportEntry, error) {
	out, err := s.reports.list(ctx, s, "/reports")
	if err != nil {
		return nil, fmt.Errorf("list reports: %w", err)
	}
	return out, nil
}

// PruneReports removes the report entries written least recently (every
// served count merged into an entry rewrites it) until at most maxEntries
// remain, together at most maxBytes, and returns how many it removed. It
// lists the entries and reads none: on S3, one LIST request per 1000
// entries, and a DELETE per entry removed.
func (s *Store) PruneReports(ctx context.Context, maxEntries int, maxBytes int64) (int, error) {
	type listed struct {
		path    string
		modTime time.Time
		size    int64
	}
	var all []listed
	err := walk(ctx, s.driver, "/reports", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() && !strings.Contains(fi.Path(), ".tmp") {
			all = append(all, listed{fi.Path(), fi.ModTime(), fi.Size()})
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return 0, fmt.Errorf("prune reports: %w", err)
	}
	slices.SortFunc(all, func(a, b listed) int {
		if c := b.modTime.Compare(a.modTime); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	kept, bytes, removed := 0, int64(0), 0
	for _, l := range all {
		if removed == 0 && kept < maxEntries && bytes+l.size <= maxBytes {
			kept++
			bytes += l.size
			continue
		}
		// Full: this entry and every older one go.
		if err := s.driver.Delete(ctx, l.path); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return removed, fmt.Errorf("prune reports: %w", err)
		}
		removed++
	}
	return removed, nil
}

// memoReads is how many records a listing reads at once.
const memoReads = 8

// memoSettled is how long after its write a record must have been read for
// the read to be trusted while its time stays the same.
const memoSettled = 10 * time.Second

// listMemo lists the JSON records under a root, remembering each decoded
// record with its modification time, so a listing reads only what changed.
type listMemo[T any] struct {
	// clean, when set, mends a decoded record before it is kept.
	clean func(*T)

	mu     sync.Mutex
	byPath map[string]memoEntry[T]
}

type memoEntry[T any] struct {
	modTime time.Time
	readAt  time.Time
	value   T
}

func (m *listMemo[T]) list(ctx context.Context, s *Store, root string) ([]T, error) {
	type listed struct {
		path    string
		modTime time.Time
	}
	var all []listed
	err := walk(ctx, s.driver, root, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() && !strings.Contains(fi.Path(), ".tmp") {
			all = append(all, listed{fi.Path(), fi.ModTime()})
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.byPath == nil {
		m.byPath = map[string]memoEntry[T]{}
	}
	seen := make(map[string]bool, len(all))
	readAt := s.now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(memoReads)
	var mu sync.Mutex
	read := map[string]memoEntry[T]{}
	for _, l := range all {
		seen[l.path] = true
		// A record read soon after it was written may have been written
		// again within the same second (S3 times have one-second
		// resolution, and clocks differ a little): only a read well after
		// the write is trusted while the time stays the same.
		if e, ok := m.byPath[l.path]; ok && e.modTime.Equal(l.modTime) && e.readAt.Sub(l.modTime) > memoSettled {
			continue
		}
		g.Go(func() error {
			var v T
			if err := s.getJSON(gctx, l.path, &v); err != nil {
				if errors.Is(err, ErrNotFound) {
					return nil // replaced while listing
				}
				return err
			}
			if m.clean != nil {
				m.clean(&v)
			}
			mu.Lock()
			read[l.path] = memoEntry[T]{modTime: l.modTime, readAt: readAt, value: v}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	maps.Copy(m.byPath, read)
	out := make([]T, 0, len(seen))
	for p, e := range m.byPath {
		if !seen[p] {
			delete(m.byPath, p)
			continue
		}
		out = append(out, e.value)
	}
	return out, nil
}

// maxRecordSize bounds a record written. The largest is a referrers
// record: at most a manifest's worth of descriptors (mirror bounds them
// so), and the digests of the refused. The others are far smaller (each
// bounds what it keeps of image content).
const maxRecordSize = 2 * mediatype.MaxManifestSize

// maxRecordRead bounds a record read whole into memory: more than is
// written now, for records of earlier versions, which bounded less of what
// they kept (a rewrite report's paths); what is read is bounded again as
// it is kept, and written back smaller.
const maxRecordRead = 4 * maxRecordSize

func (s *Store) getJSON(ctx context.Context, p string, v any) error {
	return s.getJSONWithin(ctx, p, v, maxRecordRead)
}

// getJSONWithin is getJSON with a record of at most limit bytes.
func (s *Store) getJSONWithin(ctx context.Context, p string, v any, limit int) error {
	rc, err := s.driver.Reader(ctx, p, 0)
	if err != nil {
		return notFound(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, int64(limit)+1))
	switch {
	case err != nil:
		return fmt.Errorf("read %s: %w", p, err)
	case len(b) > limit:
		return fmt.Errorf("decode %s: %w: larger than %d bytes", p, errBadRecord, limit)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w: %w", p, errBadRecord, err)
	}
	return nil
}

// errBadRecord is a record that is there but cannot be used: one to
// overwrite, not a storage that fails.
var errBadRecord = errors.New("unreadable record")

// putJSON writes v at p as JSON without HTML escapes: a record is never
// embedded in a page, and escaped, each '<', '>' or '&' taken from an
// image or an upstream would cost six bytes. A record without them is
// byte for byte what json.Marshal writes; every record decodes as before.
func (s *Store) putJSON(ctx context.Context, p string, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > maxRecordSize {
		return fmt.Errorf("a record of %d bytes, more than %d", len(b), maxRecordSize)
	}
	return s.driver.PutContent(ctx, p, b)
}
