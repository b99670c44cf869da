package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	digest "github.com/opencontainers/go-digest"
)

// Change is one recorded normalization change (the cache's copy of what
// the rewrite package reports; cache does not import rewrite).
type Change struct {
	Kind    string   `json:"kind"`
	Path    string   `json:"path"`
	Old     string   `json:"old"`
	New     string   `json:"new"`
	Details []string `json:"details,omitempty"`
}

// Normalization is the verdict for one original manifest or index: it needs
// nothing (Normalized is empty), or its normalized form is Normalized. It
// depends only on content, so it is keyed by the original digest alone and
// holds for every repository, replica and restart.
type Normalization struct {
	Original   digest.Digest `json:"original"`
	Normalized digest.Digest `json:"normalized,omitempty"`
	MediaType  string        `json:"mediaType"`
	Changes    []Change      `json:"changes,omitempty"`
	// Rules names the rules that were on; a verdict made under other rules
	// is recomputed.
	Rules     string    `json:"rules"`
	CreatedAt time.Time `json:"createdAt"`
}

// NormalizationStore reads and writes normalization verdicts.
type NormalizationStore interface {
	GetNormalization(ctx context.Context, original digest.Digest) (Normalization, error)
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
	Normalized digest.Digest `json:"normalizedDigest"`
	Changes    []Change      `json:"changes"`
	// FirstServed and LastServed bound the normalized answers given.
	FirstServed time.Time `json:"firstServed,omitzero"`
	LastServed  time.Time `json:"lastServed,omitzero"`
	TimesServed int64     `json:"timesServed"`
	// UnnormalizedPulls counts pulls by the original digest, which get the
	// original, unfixed bytes.
	UnnormalizedPulls    int64     `json:"unnormalizedPulls"`
	LastUnnormalizedPull time.Time `json:"lastUnnormalizedPull,omitzero"`
}

// Key identifies the entry: one per upstream, repository and original digest.
func (e ReportEntry) Key() string {
	return e.Upstream + "/" + e.Repository + "@" + e.Original.String()
}

// Merge adds other's counts and times to e. Identity fields are taken from
// other when set.
func (e *ReportEntry) Merge(other ReportEntry) {
	if other.Normalized != "" {
		e.Normalized, e.MediaType, e.Changes = other.Normalized, other.MediaType, other.Changes
	}
	for _, t := range other.Tags {
		if !slices.Contains(e.Tags, t) {
			e.Tags = append(e.Tags, t)
		}
	}
	slices.Sort(e.Tags)
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
}

// XattrRemoval is the xattr keys stripped from one tar entry.
type XattrRemoval struct {
	Path string   `json:"path"`
	Keys []string `json:"keys"`
}

// LayerVerdict is what scanning one original layer found: it is clean
// (Repacked is empty), or its repackaged form is Repacked. Keyed by the
// layer's digest alone, so a base layer is scanned once for the whole
// cluster.
type LayerVerdict struct {
	Original    digest.Digest  `json:"original"`
	Compression string         `json:"compression"`
	Entries     int            `json:"entries"`
	Repacked    digest.Digest  `json:"repacked,omitempty"`
	Size        int64          `json:"size,omitempty"`
	DiffID      digest.Digest  `json:"diffID,omitempty"`
	Removals    []XattrRemoval `json:"removals,omitempty"`
	CreatedAt   time.Time      `json:"createdAt"`
}

// LayerVerdictStore reads and writes layer verdicts.
type LayerVerdictStore interface {
	GetLayerVerdict(ctx context.Context, layer digest.Digest) (LayerVerdict, error)
	PutLayerVerdict(ctx context.Context, v LayerVerdict) error
}

var (
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

// PutLayerVerdict records a verdict. A repackaged layer must already be in
// the cache: a verdict never points at a blob that is not there.
func (s *Store) PutLayerVerdict(ctx context.Context, v LayerVerdict) error {
	if err := v.Original.Validate(); err != nil {
		return fmt.Errorf("put layer verdict %q: %w", v.Original, err)
	}
	if v.Repacked != "" {
		if _, err := s.StatBlob(ctx, v.Repacked); err != nil {
			return fmt.Errorf("put layer verdict %s: repacked blob: %w", v.Original, err)
		}
	}
	return s.putJSON(ctx, layerVerdictPath(v.Original), v)
}

func reportPath(key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return path.Join("/reports", h[:2], h)
}

// GetNormalization returns the verdict recorded for original.
func (s *Store) GetNormalization(ctx context.Context, original digest.Digest) (Normalization, error) {
	if err := original.Validate(); err != nil {
		return Normalization{}, fmt.Errorf("get normalization %q: %w", original, err)
	}
	var n Normalization
	if err := s.getJSON(ctx, normalizationPath(original), &n); err != nil {
		return Normalization{}, fmt.Errorf("get normalization %s: %w", original, err)
	}
	if n.Original != original {
		return Normalization{}, fmt.Errorf("get normalization %s: record is for %s", original, n.Original)
	}
	return n, nil
}

// PutNormalization records a verdict. A normalized manifest must already be
// in the cache: a verdict never points at content that is not there.
func (s *Store) PutNormalization(ctx context.Context, n Normalization) error {
	if err := n.Original.Validate(); err != nil {
		return fmt.Errorf("put normalization %q: %w", n.Original, err)
	}
	if n.Normalized != "" {
		if _, err := s.driver.Stat(ctx, manifestPath(n.Normalized)); err != nil {
			return fmt.Errorf("put normalization %s: normalized manifest %s: %w", n.Original, n.Normalized, notFound(err))
		}
	}
	return s.putJSON(ctx, normalizationPath(n.Original), n)
}

// GetReport returns the entry with key.
func (s *Store) GetReport(ctx context.Context, key string) (ReportEntry, error) {
	var e ReportEntry
	if err := s.getJSON(ctx, reportPath(key), &e); err != nil {
		return ReportEntry{}, fmt.Errorf("get report %s: %w", key, err)
	}
	return e, nil
}

// PutReport writes e under its key.
func (s *Store) PutReport(ctx context.Context, e ReportEntry) error {
	if err := s.putJSON(ctx, reportPath(e.Key()), e); err != nil {
		return fmt.Errorf("put report %s: %w", e.Key(), err)
	}
	return nil
}

// ListReports returns every report entry.
func (s *Store) ListReports(ctx context.Context) ([]ReportEntry, error) {
	var out []ReportEntry
	err := s.driver.Walk(ctx, "/reports", func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || strings.Contains(fi.Path(), ".tmp") {
			return nil
		}
		var e ReportEntry
		if err := s.getJSON(ctx, fi.Path(), &e); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil // replaced while walking
			}
			return err
		}
		out = append(out, e)
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, fmt.Errorf("list reports: %w", err)
	}
	return out, nil
}

func (s *Store) getJSON(ctx context.Context, p string, v any) error {
	b, err := s.driver.GetContent(ctx, p)
	if err != nil {
		return notFound(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", p, err)
	}
	return nil
}

func (s *Store) putJSON(ctx context.Context, p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.driver.PutContent(ctx, p, b)
}
