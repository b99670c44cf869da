package cache

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"
)

// AccessInterval is how often at most one process records a use of a blob
// in the store (one small write), so that eviction after a restart, and on
// the other replicas, knows how recently it was used: coarse on purpose,
// because on S3 every write is a request.
const AccessInterval = time.Hour

// DefaultSharedGrace is the grace period for a cache that several replicas
// share: a use is recorded at most AccessInterval late, and a client may
// still be reading the blob an hour after it started.
const DefaultSharedGrace = AccessInterval + time.Hour

// blobUse is what this process knows of its own use of blobs: the readers
// open (pins), the blobs an eviction is removing, and when each blob was last
// used and its use last recorded in the store.
type blobUse struct {
	now func() time.Time

	mu      sync.Mutex
	pins    map[digest.Digest]int      // open readers: bounded by them
	claimed map[digest.Digest]struct{} // claimed by an eviction under way

	lastUse  *lru.Cache[digest.Digest, time.Time] // exact, this process only
	recorded *lru.Cache[digest.Digest, time.Time] // when this process last wrote the access record
}

func newUsage(now func() time.Time) *blobUse {
	return &blobUse{
		now:      now,
		pins:     map[digest.Digest]int{},
		claimed:  map[digest.Digest]struct{}{},
		lastUse:  newLRU[digest.Digest, time.Time](),
		recorded: newLRU[digest.Digest, time.Time](),
	}
}

// acquire pins dgst while a reader is open, unless an eviction has claimed
// it: then the blob is as good as gone.
func (u *blobUse) acquire(dgst digest.Digest) (release func(), ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, gone := u.claimed[dgst]; gone {
		return nil, false
	}
	u.pins[dgst]++
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			defer u.mu.Unlock()
			if u.pins[dgst]--; u.pins[dgst] <= 0 {
				delete(u.pins, dgst)
			}
		})
	}, true
}

func (u *blobUse) evicting(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.claimed[dgst]
	return ok
}

// claim marks dgst as being evicted if no reader has it open. From then on
// acquire refuses it, so nothing can start reading a blob that is about to
// go.
func (u *blobUse) claim(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pins[dgst] > 0 {
		return false
	}
	u.claimed[dgst] = struct{}{}
	return true
}

func (u *blobUse) unclaim(dgst digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.claimed, dgst)
	u.lastUse.Remove(dgst)
	u.recorded.Remove(dgst)
}

// touch notes a use of dgst now, and reports whether the use should be
// recorded in the store: when this process has not recorded one for
// AccessInterval.
func (u *blobUse) touch(dgst digest.Digest) bool {
	now := u.now()
	u.lastUse.Add(dgst, now)
	if t, ok := u.recorded.Get(dgst); ok && now.Sub(t) < AccessInterval {
		return false
	}
	u.recorded.Add(dgst, now)
	return true
}

// recordUse notes a read of dgst, and once an AccessInterval writes it to
// the store, where eviction on every replica and after a restart sees it.
func (s *Store) recordUse(ctx context.Context, dgst digest.Digest) {
	if !s.use.touch(dgst) {
		return
	}
	if err := s.driver.PutContent(ctx, accessPath(dgst), nil); err != nil {
		s.use.recorded.Remove(dgst) // try again on the next read
	}
}

// Retain marks a blob that eviction must never remove: content regnorm made
// that it cannot make again on demand (a rewritten config). The mark goes
// first, so that the blob is never evictable, not even for a moment.
func (s *Store) Retain(ctx context.Context, dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("retain %q: %w", dgst, err)
	}
	if err := s.driver.PutContent(ctx, retainedPath(dgst), nil); err != nil {
		return fmt.Errorf("retain %s: %w", dgst, err)
	}
	return nil
}

// Pin keeps a blob from eviction for EvictionPolicy.PinFor from now: the
// admission webhook pins the blobs of a variant it wrote into a Pod, which
// no upstream holds. The mark is an empty object whose time is the pin's
// (like a recorded use), so pinning again renews it, and eviction reads
// nothing but a listing. The blob need not be cached yet.
func (s *Store) Pin(ctx context.Context, dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("pin %q: %w", dgst, err)
	}
	if err := s.driver.PutContent(ctx, pinnedPath(dgst), nil); err != nil {
		return fmt.Errorf("pin %s: %w", dgst, err)
	}
	return nil
}

// EvictionPolicy bounds the cache's blobs. Zero fields are no limit.
type EvictionPolicy struct {
	// MaxBytes: least recently used blobs go until the blobs fit in it.
	MaxBytes int64
	// MaxAge: blobs unused for longer go (for S3, where a size walk is dear
	// but an age check rides along with the listing anyway).
	MaxAge time.Duration
	// Grace keeps every blob used within it, by any process: another
	// replica may be serving it, and only its recorded uses are visible
	// here. Use DefaultSharedGrace for a cache that replicas share, and 0
	// for one that a single process owns (its own readers are pinned).
	Grace time.Duration
	// PinFor keeps every blob pinned within it (Pin), whatever the
	// limits, up to MaxPinnedBytes; 0 keeps none. Pins older than twice
	// PinFor are removed by the eviction, so that the records are bounded
	// by the blobs pinned lately.
	PinFor time.Duration
	// MaxPinnedBytes bounds what pins keep: the pinned blobs are kept from
	// the most recently pinned (renewed) on while their sizes add up to at
	// most this, and the pins renewed longest ago give way first (their
	// blobs are then evicted as any other). 0: no bound but PinFor. Anyone
	// who can have blobs pinned (the webhook's callers) can then push no
	// more than this past the size limit.
	MaxPinnedBytes int64
}

// EvictionResult says what an eviction did.
type EvictionResult struct {
	Evicted int
	Freed   int64
	// Remaining is the cache after eviction.
	Remaining Usage
	// Pinned is the bytes of the blobs pins kept (within PinFor and
	// MaxPinnedBytes); PinnedOver the bytes of pinned blobs that remain
	// though MaxPinnedBytes no longer keeps them (the cache had room).
	Pinned, PinnedOver int64
}

// Evict removes blobs as policy says, least recently used first. A blob's
// last use is the latest of when it was written, when its use was last
// recorded in the store (by any process, at most AccessInterval late), and
// when this process last read it. Never evicted: a blob that is open here, a
// blob used within policy.Grace, a retained blob (Retain), and a blob
// pinned within policy.PinFor (Pin) that policy.MaxPinnedBytes keeps. Manifests and records are not blobs
// and stay. Evicted blobs are fetched again (or, for repackaged layers,
// rebuilt) when next asked for.
//
// The cost is four listings (blobs, recorded uses, retained blobs, pins),
// a delete per evicted blob and one per expired pin: no object is read.
func (s *Store) Evict(ctx context.Context, policy EvictionPolicy, now time.Time) (EvictionResult, error) {
	var entries []blobEntry
	var res EvictionResult
	err := walkDigests(ctx, s.driver, "/blobs", func(dgst digest.Digest, fi storagedriver.FileInfo) {
		if path.Base(fi.Path()) != "data" {
			return
		}
		entries = append(entries, blobEntry{dgst: dgst, size: fi.Size(), lastUse: fi.ModTime()})
		res.Remaining.Bytes += fi.Size()
		res.Remaining.Blobs++
	})
	if err != nil {
		return EvictionResult{}, fmt.Errorf("evict: list blobs: %w", err)
	}
	recorded := map[digest.Digest]time.Time{}
	if err := walkDigests(ctx, s.driver, "/access", func(dgst digest.Digest, fi storagedriver.FileInfo) {
		recorded[dgst] = fi.ModTime()
	}); err != nil {
		return EvictionResult{}, fmt.Errorf("evict: list recorded uses: %w", err)
	}
	retained := map[digest.Digest]bool{}
	if err := walkDigests(ctx, s.driver, "/retained", func(dgst digest.Digest, _ storagedriver.FileInfo) {
		retained[dgst] = true
	}); err != nil {
		return EvictionResult{}, fmt.Errorf("evict: list retained blobs: %w", err)
	}
	pinnedAt := map[digest.Digest]time.Time{}
	var expired []string
	if err := walkDigests(ctx, s.driver, "/pinned", func(dgst digest.Digest, fi storagedriver.FileInfo) {
		switch age := now.Sub(fi.ModTime()); {
		case age < policy.PinFor:
			pinnedAt[dgst] = fi.ModTime()
		case policy.PinFor > 0 && age > 2*policy.PinFor:
			expired = append(expired, fi.Path())
		}
	}); err != nil {
		return EvictionResult{}, fmt.Errorf("evict: list pins: %w", err)
	}
	for _, p := range expired {
		// Long expired: a Pod admitted since would have pinned it again.
		// One renewed between the listing and this delete is lost until
		// the webhook pins it again (at most a day's share of PinFor).
		if err := s.driver.Delete(ctx, p); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return EvictionResult{}, fmt.Errorf("evict: remove an expired pin: %w", err)
		}
	}
	for i := range entries {
		e := &entries[i]
		if t, ok := recorded[e.dgst]; ok && t.After(e.lastUse) {
			e.lastUse = t
		}
		if t, ok := s.use.lastUse.Peek(e.dgst); ok && t.After(e.lastUse) {
			e.lastUse = t
		}
	}
	pinned, over := keptPins(entries, pinnedAt, retained, policy.MaxPinnedBytes)
	for _, e := range entries {
		switch {
		case pinned[e.dgst]:
			res.Pinned += e.size
		case over[e.dgst]:
			res.PinnedOver += e.size
		}
	}
	slices.SortFunc(entries, func(a, b blobEntry) int { return a.lastUse.Compare(b.lastUse) })

	for _, e := range entries {
		tooOld := policy.MaxAge > 0 && now.Sub(e.lastUse) > policy.MaxAge
		tooBig := policy.MaxBytes > 0 && res.Remaining.Bytes > policy.MaxBytes
		if !tooOld && !tooBig {
			continue
		}
		if retained[e.dgst] || pinned[e.dgst] || now.Sub(e.lastUse) < policy.Grace || !s.use.claim(e.dgst) {
			continue
		}
		if over[e.dgst] {
			res.PinnedOver -= e.size
		}
		err := s.remove(ctx, e.dgst)
		s.use.unclaim(e.dgst)
		if err != nil {
			return res, fmt.Errorf("evict %s: %w", e.dgst, err)
		}
		res.Evicted++
		res.Freed += e.size
		res.Remaining.Bytes -= e.size
		res.Remaining.Blobs--
	}
	return res, nil
}

// keptPins splits the cached blobs pinned within PinFor (pinnedAt, by pin
// time) into those the pins keep and those past maxBytes: the most
// recently pinned first, each kept while the kept sizes add up to at most
// maxBytes, and every one pinned before the first that does not fit given
// up too, so that the pins renewed longest ago give way first; a blob
// larger than maxBytes alone gives way alone (it could never fit, and must
// not take older pins with it). Equal pin
// times go by digest, so that every replica keeps the same. Retained blobs
// are kept anyway and count for nothing here. maxBytes 0 keeps them all.
func keptPins(entries []blobEntry, pinnedAt map[digest.Digest]time.Time, retained map[digest.Digest]bool, maxBytes int64) (kept, over map[digest.Digest]bool) {
	var pins []blobEntry
	for _, e := range entries {
		if _, ok := pinnedAt[e.dgst]; ok && !retained[e.dgst] {
			pins = append(pins, e)
		}
	}
	slices.SortFunc(pins, func(a, b blobEntry) int {
		if c := pinnedAt[b.dgst].Compare(pinnedAt[a.dgst]); c != 0 {
			return c
		}
		return strings.Compare(string(a.dgst), string(b.dgst))
	})
	kept, over = map[digest.Digest]bool{}, map[digest.Digest]bool{}
	var total int64
	full := false
	for _, p := range pins {
		if maxBytes > 0 && p.size > maxBytes {
			// It can never fit: it gives way alone, and takes no other
			// pin with it.
			over[p.dgst] = true
			continue
		}
		if !full && (maxBytes <= 0 || total+p.size <= maxBytes) {
			kept[p.dgst] = true
			total += p.size
			continue
		}
		full = true
		over[p.dgst] = true
	}
	return kept, over
}

// blobEntry is a cached blob as eviction sees it.
type blobEntry struct {
	dgst    digest.Digest
	size    int64
	lastUse time.Time
}

// remove deletes a blob and its recorded use.
func (s *Store) remove(ctx context.Context, dgst digest.Digest) error {
	s.sizes.Remove(dgst)
	err := s.driver.Delete(ctx, path.Dir(blobPath(dgst)))
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return err
	}
	err = s.driver.Delete(ctx, accessPath(dgst))
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return err
	}
	return nil
}

// walk is the driver's Walk of root, stopped when ctx ends: the
// filesystem driver's own walk does not look at ctx, and a pass over a large
// cache must not hold a shutdown past its drain.
func walk(ctx context.Context, d storagedriver.StorageDriver, root string, f storagedriver.WalkFn) error {
	err := d.Walk(ctx, root, func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return f(fi)
	})
	if cerr := ctx.Err(); cerr != nil {
		return cerr // the driver wraps it in an error of its own
	}
	return err
}

// walkDigests calls f for every object under root laid out by digestPath,
// with the digest its path names. A missing root is empty.
func walkDigests(ctx context.Context, d storagedriver.StorageDriver, root string, f func(digest.Digest, storagedriver.FileInfo)) error {
	err := walk(ctx, d, root, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			return nil
		}
		if dgst, ok := digestFromPath(root, fi.Path()); ok {
			f(dgst, fi)
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return err
	}
	return nil
}

// upgradedPath marks a cache whose rewritten configs are all retained:
// caches written before Retain existed are not, and Upgrade fixes that once.
const upgradedPath = "/_upgrades/retained-configs"

// Upgrade brings a cache written by an earlier version of regnorm up to
// date: it marks every rewritten config retained, reading each derived
// record once. A marker object records that it is done, so later calls (on
// every start, by every replica) cost one read.
func (s *Store) Upgrade(ctx context.Context) error {
	if _, err := s.driver.GetContent(ctx, upgradedPath); err == nil {
		return nil
	} else if !errors.Is(notFound(err), ErrNotFound) {
		return fmt.Errorf("upgrade: %w", err)
	}
	var configs []digest.Digest
	err := walkDigests(ctx, s.driver, "/derived", func(dgst digest.Digest, fi storagedriver.FileInfo) {
		var d Derived
		if s.getJSON(ctx, fi.Path(), &d) == nil && d.Kind == DerivedConfig {
			configs = append(configs, dgst)
		}
	})
	if err != nil {
		return fmt.Errorf("upgrade: list derived records: %w", err)
	}
	for _, dgst := range configs {
		if err := s.Retain(ctx, dgst); err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
	}
	if err := s.driver.PutContent(ctx, upgradedPath, nil); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	return nil
}
