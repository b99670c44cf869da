package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/schema1"
)

// Sentinel errors, tested with errors.Is.
var (
	// ErrNotFound means the cache holds no such blob, manifest or tag.
	ErrNotFound = errors.New("not found in cache")
	// ErrDigestMismatch means content did not hash to the digest it was stored under.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrMediaTypeMismatch means a manifest was put with a media type its
	// content does not have (see mediatype.Of).
	ErrMediaTypeMismatch = errors.New("media type mismatch")
	// ErrSizeMismatch means content was longer or shorter than announced.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrDamaged means a cached blob failed verification as it was read
	// (OpenVerified): the storage lost or changed bytes. The blob has been
	// removed, so the next read fetches it again.
	ErrDamaged = errors.New("cached blob damaged")
)

// BlobInfo describes a blob held in the cache.
type BlobInfo struct {
	Digest digest.Digest
	Size   int64
}

// Manifest is a manifest or index exactly as it was fetched: its bytes are
// never re-marshalled, so Digest is always the digest of Content.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Content   []byte
}

// TagRecord remembers which manifest a tag pointed to, and when upstream
// last confirmed it.
type TagRecord struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
	CheckedAt time.Time     `json:"checkedAt"`
}

// BlobProvider opens blobs that are in the cache.
type BlobProvider interface {
	StatBlob(ctx context.Context, dgst digest.Digest) (BlobInfo, error)
	OpenBlob(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadSeekCloser, BlobInfo, error)
	OpenVerified(ctx context.Context, dgst digest.Digest) (io.ReadCloser, BlobInfo, error)
}

// BlobIngester writes blobs into the cache; see Ingest.
type BlobIngester interface {
	IngestBlob(ctx context.Context, dgst digest.Digest, size int64) (*Ingest, error)
	NewBlob(ctx context.Context) (*Ingest, error)
}

// ManifestStore reads and writes manifests by digest, as a repository of
// an upstream serves them.
type ManifestStore interface {
	GetManifest(ctx context.Context, upstream, repo string, dgst digest.Digest) (Manifest, error)
	PutManifest(ctx context.Context, upstream, repo string, m Manifest) error
}

// TagStore reads and writes tag records.
type TagStore interface {
	GetTag(ctx context.Context, upstream, repo, tag string) (TagRecord, error)
	PutTag(ctx context.Context, upstream, repo, tag string, rec TagRecord) error
}

// Store is the cache on one storage driver. It is safe for concurrent use,
// including by several processes sharing the same storage.
type Store struct {
	driver  storagedriver.StorageDriver
	now     func() time.Time
	uploads MultipartUploads // nil: the driver leaves none (not S3)

	// sizes remembers the sizes of blobs seen, so that serving a blob needs
	// no Stat (on S3, a HEAD) before its GET. Content-addressed sizes never
	// change; an entry is dropped when the blob turns out to be gone.
	sizes *lru.Cache[digest.Digest, int64]
	use   *blobUse
	// reports and nodes memoize decoded records by path and modification
	// time, so listing them reads only what changed.
	reports *listMemo[ReportEntry]
	nodes   *listMemo[NodeReport]
}

// Option configures a Store.
type Option func(*Store)

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithMultipartUploads lets CleanUploads end the multipart uploads a crash
// left unfinished, which are invisible through the storage driver.
func WithMultipartUploads(m MultipartUploads) Option { return func(s *Store) { s.uploads = m } }

var (
	_ BlobProvider  = (*Store)(nil)
	_ BlobIngester  = (*Store)(nil)
	_ ManifestStore = (*Store)(nil)
	_ TagStore      = (*Store)(nil)
)

// maxRemembered bounds each of the Store's in-memory maps (blob sizes,
// access times, links): beyond it the least recently used entries go, which
// costs a storage read the next time, never a wrong answer.
const maxRemembered = 1 << 16

// New returns a Store on driver.
func New(driver storagedriver.StorageDriver, opts ...Option) *Store {
	s := &Store{driver: driver, now: time.Now, sizes: newLRU[digest.Digest, int64](), reports: &listMemo[ReportEntry]{clean: boundReport}, nodes: &listMemo[NodeReport]{}}
	for _, o := range opts {
		o(s)
	}
	s.use = newUsage(s.now)
	return s
}

func newLRU[K comparable, V any]() *lru.Cache[K, V] {
	c, err := lru.New[K, V](maxRemembered)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	return c
}

// manifestEnvelope is how a manifest is stored: one object, written at once,
// so media type and bytes can never disagree.
type manifestEnvelope struct {
	MediaType string `json:"mediaType"`
	Content   []byte `json:"content"`
}

// GetManifest returns the cached manifest dgst as upstream's repository
// repo serves it, verified against its digest (for schema 1, the digest of
// its payload).
//
// A manifest whose digest decides its bytes (every type but schema 1) is
// one entry, shared by every repository of every upstream. A schema 1
// manifest's digest covers its payload only: other bytes (other signatures,
// or none) have the same digest, so each repository keeps its own copy, and
// what one upstream or repository sends never replaces what another one's
// clients get. (A schema 1 entry at the shared path, from before, is not
// read: any upstream may have written it.)
func (s *Store) GetManifest(ctx context.Context, upstream, repo string, dgst digest.Digest) (Manifest, error) {
	if err := dgst.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("get manifest %q: %w", dgst, err)
	}
	m, err := s.readManifest(ctx, manifestPath(dgst), dgst)
	switch {
	case err == nil && !schema1.Is(m.MediaType):
		return m, nil
	case err != nil && !errors.Is(err, ErrNotFound):
		return Manifest{}, err
	}
	if m, err = s.readManifest(ctx, schema1Path(upstream, repo, dgst), dgst); err == nil && !schema1.Is(m.MediaType) {
		return Manifest{}, fmt.Errorf("get manifest %s of %s/%s: a %s among schema 1 manifests: %w", dgst, upstream, repo, m.MediaType, ErrMediaTypeMismatch)
	}
	return m, err
}

// readManifest reads and verifies the envelope at p.
func (s *Store) readManifest(ctx context.Context, p string, dgst digest.Digest) (Manifest, error) {
	b, err := s.driver.GetContent(ctx, p)
	if err != nil {
		return Manifest{}, fmt.Errorf("get manifest %s: %w", dgst, notFound(err))
	}
	var env manifestEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return Manifest{}, fmt.Errorf("get manifest %s: decode: %w", dgst, err)
	}
	// The type is the content's, whatever the record says: a record written
	// before types were derived may hold the type some upstream claimed.
	mediaType, err := mediatype.Of(env.Content)
	if err != nil {
		return Manifest{}, fmt.Errorf("get manifest %s: %w", dgst, err)
	}
	if got, err := schema1.ManifestDigest(dgst.Algorithm(), mediaType, env.Content); err != nil || got != dgst {
		return Manifest{}, fmt.Errorf("get manifest %s: content hashes to %s: %w", dgst, got, errors.Join(err, ErrDigestMismatch))
	}
	return Manifest{MediaType: mediaType, Digest: dgst, Content: env.Content}, nil
}

// PutManifest stores m, as upstream's repository repo served it, after
// checking that its content matches its digest and its media type is the
// one its content decides (mediatype.Of): the cache is shared by digest, so
// no writer can store a type of its own for bytes another writer put there.
// A schema 1 manifest is the repository's own copy (see GetManifest).
func (s *Store) PutManifest(ctx context.Context, upstream, repo string, m Manifest) error {
	if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("put manifest %q: %w", m.Digest, err)
	}
	if mt, err := mediatype.Of(m.Content); err != nil || mt != m.MediaType {
		return fmt.Errorf("put manifest %s: type %q, the content is %q: %w", m.Digest, m.MediaType, mt, errors.Join(err, ErrMediaTypeMismatch))
	}
	if got, err := schema1.ManifestDigest(m.Digest.Algorithm(), m.MediaType, m.Content); err != nil || got != m.Digest {
		return fmt.Errorf("put manifest %s: content hashes to %s: %w", m.Digest, got, errors.Join(err, ErrDigestMismatch))
	}
	b, err := json.Marshal(manifestEnvelope{MediaType: m.MediaType, Content: m.Content})
	if err != nil {
		return fmt.Errorf("put manifest %s: %w", m.Digest, err)
	}
	p := manifestPath(m.Digest)
	if schema1.Is(m.MediaType) {
		p = schema1Path(upstream, repo, m.Digest)
	}
	if err := s.driver.PutContent(ctx, p, b); err != nil {
		return fmt.Errorf("put manifest %s: %w", m.Digest, err)
	}
	return nil
}

// GetTag returns the record of upstream/repo:tag.
func (s *Store) GetTag(ctx context.Context, upstream, repo, tag string) (TagRecord, error) {
	var rec TagRecord
	if err := s.getJSON(ctx, tagPath(upstream, repo, tag), &rec); err != nil {
		return TagRecord{}, fmt.Errorf("get tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	if err := rec.Digest.Validate(); err != nil {
		return TagRecord{}, fmt.Errorf("get tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	return rec, nil
}

// PutTag writes the record of upstream/repo:tag.
func (s *Store) PutTag(ctx context.Context, upstream, repo, tag string, rec TagRecord) error {
	if err := s.putJSON(ctx, tagPath(upstream, repo, tag), rec); err != nil {
		return fmt.Errorf("put tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	return nil
}

// MultipartUploads ends multipart uploads that were never completed: a
// process killed while it wrote a blob to S3 leaves one, invisible through
// the storage driver, and the bucket keeps its parts (and bills them) until
// it is aborted.
type MultipartUploads interface {
	// AbortStale aborts the uploads under prefix (a driver path) started
	// before olderThan, and returns how many it aborted.
	AbortStale(ctx context.Context, prefix string, olderThan time.Time) (int, error)
}

// CleanUploads removes what writers that died (a crash, a SIGKILL) left
// behind: temporary objects not written to for idle, and on S3 the
// multipart uploads started more than lifetime ago. A multipart upload
// shows when it started, not when it was last written to, so lifetime must
// be longer than any live writer runs (a download's time limit, and a
// margin). Younger leftovers may belong to a live writer (another replica
// sharing the storage), so they stay. A temporary object whose age cannot
// be read stays too, until a later pass can tell. It returns how many
// leftovers it removed.
func (s *Store) CleanUploads(ctx context.Context, idle, lifetime time.Duration, now time.Time) (int, error) {
	entries, err := s.driver.List(ctx, "/_uploads")
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return 0, fmt.Errorf("list uploads: %w", err)
	}
	removed := 0
	var errs []error
	for _, dir := range entries {
		fi, err := s.driver.Stat(ctx, dir+"/data")
		switch err = notFound(err); {
		case err == nil && now.Sub(fi.ModTime()) < idle:
			continue // a live writer's, perhaps
		case err == nil:
			removed++
		case errors.Is(err, ErrNotFound):
			// An empty directory: what a published blob leaves on the
			// filesystem driver. Tidied, not counted.
		default:
			errs = append(errs, fmt.Errorf("stat upload %s: %w", dir, err))
			continue
		}
		if err := s.driver.Delete(ctx, dir); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			errs = append(errs, fmt.Errorf("remove upload %s: %w", dir, err))
		}
	}
	if s.uploads != nil {
		n, err := s.uploads.AbortStale(ctx, "/_uploads/", now.Add(-lifetime))
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("abort stale multipart uploads: %w", err))
		}
	}
	return removed, errors.Join(errs...)
}

func notFound(err error) error {
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return ErrNotFound
	}
	return err
}

func randomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Usage is how much the cache holds.
type Usage struct {
	Bytes int64 `json:"bytes"`
	Blobs int64 `json:"blobs"`
}

// Usage walks the blobs and adds up their sizes. It costs a listing of the
// whole blob tree: call it now and then, not per request.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	err := walk(ctx, s.driver, "/blobs", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			u.Bytes += fi.Size()
			u.Blobs++
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return Usage{}, fmt.Errorf("cache usage: %w", err)
	}
	return u, nil
}
