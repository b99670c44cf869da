package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	digest "github.com/opencontainers/go-digest"
)

// Sentinel errors, tested with errors.Is.
var (
	// ErrNotFound means the cache holds no such blob, manifest or tag.
	ErrNotFound = errors.New("not found in cache")
	// ErrDigestMismatch means content did not hash to the digest it was stored under.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch means content was longer or shorter than announced.
	ErrSizeMismatch = errors.New("size mismatch")
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
	OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, BlobInfo, error)
}

// BlobIngester writes blobs into the cache; see Ingest.
type BlobIngester interface {
	IngestBlob(ctx context.Context, dgst digest.Digest, size int64) (*Ingest, error)
	NewBlob(ctx context.Context) (*Ingest, error)
}

// ManifestStore reads and writes manifests by digest.
type ManifestStore interface {
	GetManifest(ctx context.Context, dgst digest.Digest) (Manifest, error)
	PutManifest(ctx context.Context, m Manifest) error
}

// TagStore reads and writes tag records.
type TagStore interface {
	GetTag(ctx context.Context, upstream, repo, tag string) (TagRecord, error)
	PutTag(ctx context.Context, upstream, repo, tag string, rec TagRecord) error
}

// Store is the cache on one storage driver. It is safe for concurrent use,
// including by several processes sharing the same storage.
type Store struct {
	driver storagedriver.StorageDriver

	// What this process knows of blob use, for eviction.
	mu         sync.Mutex
	pins       map[digest.Digest]int
	lastAccess map[digest.Digest]time.Time
}

var (
	_ BlobProvider  = (*Store)(nil)
	_ BlobIngester  = (*Store)(nil)
	_ ManifestStore = (*Store)(nil)
	_ TagStore      = (*Store)(nil)
)

// New returns a Store on driver.
func New(driver storagedriver.StorageDriver) *Store {
	return &Store{driver: driver, pins: map[digest.Digest]int{}, lastAccess: map[digest.Digest]time.Time{}}
}

// StatBlob reports whether dgst is cached, and its size.
func (s *Store) StatBlob(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	if err := dgst.Validate(); err != nil {
		return BlobInfo{}, fmt.Errorf("stat blob %q: %w", dgst, err)
	}
	fi, err := s.driver.Stat(ctx, blobPath(dgst))
	if err != nil {
		return BlobInfo{}, fmt.Errorf("stat blob %s: %w", dgst, notFound(err))
	}
	return BlobInfo{Digest: dgst, Size: fi.Size()}, nil
}

// OpenBlob opens a cached blob for reading. The reader seeks, so it can serve
// range requests; on the filesystem driver it is the *os.File itself, which
// lets net/http send it with sendfile.
func (s *Store) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, BlobInfo, error) {
	info, err := s.StatBlob(ctx, dgst)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	p := blobPath(dgst)
	rc, err := s.driver.Reader(ctx, p, 0)
	if err != nil {
		return nil, BlobInfo{}, fmt.Errorf("open blob %s: %w", dgst, notFound(err))
	}
	if rsc, ok := rc.(io.ReadSeekCloser); ok {
		return rsc, info, nil
	}
	return &driverSeeker{ctx: ctx, driver: s.driver, path: p, size: info.Size, rc: rc}, info, nil
}

// IngestBlob starts writing the blob dgst. size is the expected size, or -1
// when unknown. The blob becomes visible only when Commit verifies it.
func (s *Store) IngestBlob(ctx context.Context, dgst digest.Digest, size int64) (*Ingest, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("ingest blob %q: %w", dgst, err)
	}
	return s.ingest(ctx, dgst, size, dgst.Algorithm())
}

// NewBlob starts writing content regnorm produces (a repackaged layer, a
// new config), whose digest is known only once it is written: Commit
// publishes it under the sha256 digest of what was written, which Digest
// then returns.
func (s *Store) NewBlob(ctx context.Context) (*Ingest, error) {
	return s.ingest(ctx, "", -1, digest.SHA256)
}

func (s *Store) ingest(ctx context.Context, dgst digest.Digest, size int64, alg digest.Algorithm) (*Ingest, error) {
	id, err := randomID()
	if err != nil {
		return nil, err
	}
	tmp := uploadPath(id)
	fw, err := s.driver.Writer(ctx, tmp, false)
	if err != nil {
		return nil, fmt.Errorf("ingest blob %s: %w", dgst, err)
	}
	return &Ingest{store: s, fw: fw, tmp: tmp, dgst: dgst, size: size, alg: alg, hash: alg.Hash()}, nil
}

// Ingest is a blob being written. Write the content, then Commit to verify and
// publish it, or Cancel to drop it. Whatever happens, nothing that fails
// verification is ever moved to the blob's path.
type Ingest struct {
	store   *Store
	fw      storagedriver.FileWriter
	tmp     string
	dgst    digest.Digest // expected; empty for NewBlob until Commit
	size    int64
	alg     digest.Algorithm
	hash    hash.Hash
	written int64
	done    bool
}

// Write writes p to the temporary object and the running hash.
func (in *Ingest) Write(p []byte) (int, error) {
	if in.size >= 0 && in.written+int64(len(p)) > in.size {
		return 0, fmt.Errorf("ingest blob %s: more than %d bytes: %w", in.dgst, in.size, ErrSizeMismatch)
	}
	n, err := in.fw.Write(p)
	in.hash.Write(p[:n])
	in.written += int64(n)
	return n, err
}

// Commit verifies size and digest and publishes the blob. On any error the
// temporary object is removed.
func (in *Ingest) Commit(ctx context.Context) error {
	if in.done {
		return errors.New("ingest already finished")
	}
	in.done = true
	if err := in.verify(); err != nil {
		return errors.Join(err, in.cancel(ctx))
	}
	if err := in.fw.Commit(ctx); err != nil {
		return errors.Join(fmt.Errorf("commit blob %s: %w", in.dgst, err), in.cancel(ctx))
	}
	if err := in.fw.Close(); err != nil {
		return errors.Join(fmt.Errorf("close blob %s: %w", in.dgst, err), in.store.driver.Delete(ctx, in.tmp))
	}
	if err := in.store.driver.Move(ctx, in.tmp, blobPath(in.dgst)); err != nil {
		return errors.Join(fmt.Errorf("publish blob %s: %w", in.dgst, err), in.store.driver.Delete(ctx, in.tmp))
	}
	return nil
}

// Cancel drops the temporary object. It is safe to call after Commit.
func (in *Ingest) Cancel(ctx context.Context) error {
	if in.done {
		return nil
	}
	in.done = true
	return in.cancel(ctx)
}

func (in *Ingest) cancel(ctx context.Context) error {
	err := in.fw.Cancel(ctx)
	in.fw.Close()
	if err != nil {
		return fmt.Errorf("cancel blob %s: %w", in.dgst, err)
	}
	return nil
}

func (in *Ingest) verify() error {
	if in.size >= 0 && in.written != in.size {
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", in.dgst, in.written, in.size, ErrSizeMismatch)
	}
	got := digest.NewDigest(in.alg, in.hash)
	if in.dgst == "" {
		in.dgst = got // produced content: its digest is what was written
		return nil
	}
	if got != in.dgst {
		return fmt.Errorf("blob %s: content hashes to %s: %w", in.dgst, got, ErrDigestMismatch)
	}
	return nil
}

// Digest is the blob's digest: the expected one, or for NewBlob the digest
// of what was written, once Commit has run.
func (in *Ingest) Digest() digest.Digest { return in.dgst }

// Size is how many bytes have been written.
func (in *Ingest) Size() int64 { return in.written }

// manifestEnvelope is how a manifest is stored: one object, written at once,
// so media type and bytes can never disagree.
type manifestEnvelope struct {
	MediaType string `json:"mediaType"`
	Content   []byte `json:"content"`
}

// GetManifest returns a cached manifest, verified against its digest.
func (s *Store) GetManifest(ctx context.Context, dgst digest.Digest) (Manifest, error) {
	if err := dgst.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("get manifest %q: %w", dgst, err)
	}
	b, err := s.driver.GetContent(ctx, manifestPath(dgst))
	if err != nil {
		return Manifest{}, fmt.Errorf("get manifest %s: %w", dgst, notFound(err))
	}
	var env manifestEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return Manifest{}, fmt.Errorf("get manifest %s: decode: %w", dgst, err)
	}
	if got := dgst.Algorithm().FromBytes(env.Content); got != dgst {
		return Manifest{}, fmt.Errorf("get manifest %s: content hashes to %s: %w", dgst, got, ErrDigestMismatch)
	}
	return Manifest{MediaType: env.MediaType, Digest: dgst, Content: env.Content}, nil
}

// PutManifest stores m after checking that its content matches its digest.
func (s *Store) PutManifest(ctx context.Context, m Manifest) error {
	if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("put manifest %q: %w", m.Digest, err)
	}
	if got := m.Digest.Algorithm().FromBytes(m.Content); got != m.Digest {
		return fmt.Errorf("put manifest %s: content hashes to %s: %w", m.Digest, got, ErrDigestMismatch)
	}
	b, err := json.Marshal(manifestEnvelope{MediaType: m.MediaType, Content: m.Content})
	if err != nil {
		return fmt.Errorf("put manifest %s: %w", m.Digest, err)
	}
	if err := s.driver.PutContent(ctx, manifestPath(m.Digest), b); err != nil {
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

// CleanUploads removes temporary objects older than maxAge: what a crashed
// process left behind. Younger ones may belong to a live writer (another
// replica sharing the storage), so they stay.
func (s *Store) CleanUploads(ctx context.Context, maxAge time.Duration, now time.Time) (int, error) {
	entries, err := s.driver.List(ctx, "/_uploads")
	if err != nil {
		if errors.As(err, new(storagedriver.PathNotFoundError)) {
			return 0, nil
		}
		return 0, fmt.Errorf("list uploads: %w", err)
	}
	removed := 0
	for _, dir := range entries {
		fi, err := s.driver.Stat(ctx, dir+"/data")
		if err == nil && now.Sub(fi.ModTime()) < maxAge {
			continue
		}
		if err := s.driver.Delete(ctx, dir); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return removed, fmt.Errorf("remove upload %s: %w", dir, err)
		}
		removed++
	}
	return removed, nil
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
	err := s.driver.Walk(ctx, "/blobs", func(fi storagedriver.FileInfo) error {
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
