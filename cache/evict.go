package cache

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	digest "github.com/opencontainers/go-digest"
)

// Derived kinds: content regnorm made, which upstream does not have.
const (
	// DerivedLayer is a repackaged layer: rebuilt from its Source layer if
	// evicted (repackaging is deterministic, and the rebuild is verified
	// against the digest).
	DerivedLayer = "layer"
	// DerivedConfig is a rewritten config: small, and never evicted.
	DerivedConfig = "config"
)

// Derived records how to make a blob that only regnorm has.
type Derived struct {
	Digest digest.Digest `json:"digest"`
	Kind   string        `json:"kind"`
	// Source is the upstream blob it was made from.
	Source     digest.Digest `json:"source"`
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
}

func derivedPath(dgst digest.Digest) string { return digestPath("derived", dgst) }

// PutDerived records how d.Digest was made.
func (s *Store) PutDerived(ctx context.Context, d Derived) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("put derived %q: %w", d.Digest, err)
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
	return d, nil
}

// Pin marks a blob in use while it is served: eviction passes it over until
// the returned function is called. (On the filesystem an open file survives
// its deletion anyway; on S3 a GET in progress may not.)
func (s *Store) Pin(dgst digest.Digest) (unpin func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pins[dgst]++
	s.lastAccess[dgst] = time.Now()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pins[dgst]--; s.pins[dgst] <= 0 {
			delete(s.pins, dgst)
		}
	}
}

// EvictionPolicy bounds the cache's blobs. Zero fields are no limit.
type EvictionPolicy struct {
	// MaxBytes: least recently used blobs go until the blobs fit in it.
	MaxBytes int64
	// MaxAge: blobs unused for longer go (for S3, where a size walk is dear
	// but an age check rides along with the listing anyway).
	MaxAge time.Duration
}

// EvictionResult says what an eviction did.
type EvictionResult struct {
	Evicted int
	Freed   int64
	// Remaining is the cache after eviction.
	Remaining Usage
}

// Evict removes blobs as policy says: least recently used first (last
// served by this process, else last written), never one in use, never a
// rewritten config. Manifests and records are not blobs and stay. Evicted
// blobs are fetched again (or, for repackaged layers, rebuilt) when next
// asked for.
func (s *Store) Evict(ctx context.Context, policy EvictionPolicy, now time.Time) (EvictionResult, error) {
	type entry struct {
		dgst    digest.Digest
		size    int64
		lastUse time.Time
	}
	var entries []entry
	var res EvictionResult
	err := s.driver.Walk(ctx, "/blobs", func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || path.Base(fi.Path()) != "data" {
			return nil
		}
		dir := path.Dir(fi.Path()) // /blobs/<alg>/<xx>/<hex>
		dgst := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(path.Dir(path.Dir(dir)))), path.Base(dir))
		if dgst.Validate() != nil {
			return nil
		}
		entries = append(entries, entry{dgst: dgst, size: fi.Size(), lastUse: fi.ModTime()})
		res.Remaining.Bytes += fi.Size()
		res.Remaining.Blobs++
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return EvictionResult{}, fmt.Errorf("evict: list blobs: %w", err)
	}
	keep, err := s.derivedConfigs(ctx)
	if err != nil {
		return EvictionResult{}, err
	}
	s.mu.Lock()
	for i := range entries {
		if t, ok := s.lastAccess[entries[i].dgst]; ok && t.After(entries[i].lastUse) {
			entries[i].lastUse = t
		}
	}
	s.mu.Unlock()
	slices.SortFunc(entries, func(a, b entry) int { return a.lastUse.Compare(b.lastUse) })

	for _, e := range entries {
		tooOld := policy.MaxAge > 0 && now.Sub(e.lastUse) > policy.MaxAge
		tooBig := policy.MaxBytes > 0 && res.Remaining.Bytes > policy.MaxBytes
		if !tooOld && !tooBig {
			continue
		}
		if keep[e.dgst] || !s.claimForEviction(e.dgst) {
			continue
		}
		err := s.driver.Delete(ctx, path.Dir(blobPath(e.dgst)))
		s.mu.Lock()
		delete(s.lastAccess, e.dgst)
		s.mu.Unlock()
		if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return res, fmt.Errorf("evict %s: %w", e.dgst, err)
		}
		res.Evicted++
		res.Freed += e.size
		res.Remaining.Bytes -= e.size
		res.Remaining.Blobs--
	}
	return res, nil
}

// claimForEviction reports whether dgst is not in use.
func (s *Store) claimForEviction(dgst digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pins[dgst] == 0
}

// derivedConfigs lists the rewritten configs, which are never evicted.
func (s *Store) derivedConfigs(ctx context.Context) (map[digest.Digest]bool, error) {
	keep := map[digest.Digest]bool{}
	err := s.driver.Walk(ctx, "/derived", func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || strings.Contains(fi.Path(), ".tmp") {
			return nil
		}
		var d Derived
		if err := s.getJSON(ctx, fi.Path(), &d); err == nil && d.Kind == DerivedConfig {
			keep[d.Digest] = true
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, fmt.Errorf("evict: list derived blobs: %w", err)
	}
	return keep, nil
}
