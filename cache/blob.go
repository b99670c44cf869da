package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	digest "github.com/opencontainers/go-digest"
)

// StatBlob reports whether dgst is cached, and its size.
func (s *Store) StatBlob(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	if err := dgst.Validate(); err != nil {
		return BlobInfo{}, fmt.Errorf("stat blob %q: %w", dgst, err)
	}
	if s.use.evicting(dgst) {
		return BlobInfo{}, fmt.Errorf("stat blob %s: being evicted: %w", dgst, ErrNotFound)
	}
	fi, err := s.driver.Stat(ctx, blobPath(dgst))
	if err != nil {
		err = notFound(err)
		if errors.Is(err, ErrNotFound) {
			s.sizes.Remove(dgst)
		}
		return BlobInfo{}, fmt.Errorf("stat blob %s: %w", dgst, err)
	}
	s.sizes.Add(dgst, fi.Size())
	return BlobInfo{Digest: dgst, Size: fi.Size()}, nil
}

// BlobSize is a cached blob's size: remembered from an earlier stat, open
// or ingest, else StatBlob's. A caller that decides how to read a blob by
// its size asks this before OpenBlob: OpenBlob then needs no stat of its
// own, so the two cost what OpenBlob alone would (on S3, the GET, and a
// HEAD only when the size is not remembered).
func (s *Store) BlobSize(ctx context.Context, dgst digest.Digest) (int64, error) {
	if err := dgst.Validate(); err != nil {
		return 0, fmt.Errorf("blob size %q: %w", dgst, err)
	}
	if size, ok := s.sizes.Get(dgst); ok && !s.use.evicting(dgst) {
		return size, nil
	}
	info, err := s.StatBlob(ctx, dgst)
	return info.Size, err
}

// OpenBlob opens a cached blob for reading from offset on (a range
// request's start; 0 for the whole blob). The reader seeks, so it can serve
// range requests; on the filesystem driver it reads the file itself, which
// lets net/http send it with sendfile. On S3 the open is the one GET that
// serves it: the size is remembered from earlier reads, and the GET starts at
// offset.
//
// The blob cannot be evicted until the reader is closed, and the read
// counts as a use for eviction (see Evict). OpenBlob does not verify the
// content: the digest was checked when it was ingested, and clients check it
// again. Content that a rule builds on is read with OpenVerified.
func (s *Store) OpenBlob(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadSeekCloser, BlobInfo, error) {
	if err := dgst.Validate(); err != nil {
		return nil, BlobInfo{}, fmt.Errorf("open blob %q: %w", dgst, err)
	}
	release, ok := s.use.acquire(dgst)
	if !ok {
		return nil, BlobInfo{}, fmt.Errorf("open blob %s: being evicted: %w", dgst, ErrNotFound)
	}
	rsc, info, err := s.open(ctx, dgst, offset, release)
	if err != nil {
		release()
		return nil, BlobInfo{}, err
	}
	s.recordUse(ctx, dgst)
	return rsc, info, nil
}

func (s *Store) open(ctx context.Context, dgst digest.Digest, offset int64, release func()) (io.ReadSeekCloser, BlobInfo, error) {
	size, known := s.sizes.Get(dgst)
	if !known {
		info, err := s.StatBlob(ctx, dgst)
		if err != nil {
			return nil, BlobInfo{}, err
		}
		size = info.Size
	}
	if offset < 0 || offset > size {
		offset = 0 // an unsatisfiable range: net/http answers it
	}
	p := blobPath(dgst)
	rc, err := s.driver.Reader(ctx, p, offset)
	if err != nil {
		err = notFound(err)
		if errors.Is(err, ErrNotFound) {
			s.sizes.Remove(dgst)
		}
		return nil, BlobInfo{}, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	info := BlobInfo{Digest: dgst, Size: size}
	switch r := rc.(type) {
	case *os.File:
		// Embedded, so net/http still finds the file (syscall.Conn) and
		// uses sendfile.
		return &openFile{File: r, release: release}, info, nil
	case io.ReadSeekCloser:
		return &openSeeker{ReadSeekCloser: r, release: release}, info, nil
	}
	return &driverSeeker{ctx: ctx, driver: s.driver, path: p, size: size, offset: offset, pos: offset, rc: rc, release: release}, info, nil
}

// openFile is a blob file on the filesystem driver.
type openFile struct {
	*os.File
	release func()
}

func (f *openFile) Close() error {
	err := f.File.Close()
	f.release()
	return err
}

type openSeeker struct {
	io.ReadSeekCloser
	release func()
}

func (o *openSeeker) Close() error {
	err := o.ReadSeekCloser.Close()
	o.release()
	return err
}

// OpenVerified opens a cached blob to build something from it (a layer
// scan, a repackaged layer, a rewritten config): whatever is built gets a new
// digest, so nothing downstream could notice damage in what it was built
// from. The reader hashes what it reads and, at the end, checks size and
// digest: a short or wrong blob is an error (ErrDamaged, and
// ErrSizeMismatch or ErrDigestMismatch), never an end of stream. A blob that
// fails the check is removed from the cache, so that it is fetched again.
// Read it to the end.
func (s *Store) OpenVerified(ctx context.Context, dgst digest.Digest) (io.ReadCloser, BlobInfo, error) {
	rsc, info, err := s.OpenBlob(ctx, dgst, 0)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	return &verifiedReader{rc: rsc, dgst: dgst, size: info.Size, hash: dgst.Algorithm().Hash(), onCorrupt: func() {
		s.removeCorrupt(context.WithoutCancel(ctx), dgst)
	}}, info, nil
}

// removeCorrupt deletes a blob that failed verification. Best effort: a
// blob that stays is caught again by the next verified read.
func (s *Store) removeCorrupt(ctx context.Context, dgst digest.Digest) {
	_ = s.remove(ctx, dgst)
}

// verifiedReader checks size and digest of what it reads at the end of the
// stream (ggcr's internal/verify).
type verifiedReader struct {
	rc        io.ReadCloser
	dgst      digest.Digest
	size      int64
	hash      hash.Hash
	read      int64
	err       error
	onCorrupt func()
}

func (v *verifiedReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.hash.Write(p[:n])
	v.read += int64(n)
	switch {
	case v.read > v.size:
		v.err = fmt.Errorf("cached blob %s: more than %d bytes: %w: %w", v.dgst, v.size, ErrDamaged, ErrSizeMismatch)
	case err == io.EOF && v.read != v.size:
		v.err = fmt.Errorf("cached blob %s: %d bytes, want %d: %w: %w", v.dgst, v.read, v.size, ErrDamaged, ErrSizeMismatch)
	case err == io.EOF:
		if got := digest.NewDigest(v.dgst.Algorithm(), v.hash); got != v.dgst {
			v.err = fmt.Errorf("cached blob %s: content hashes to %s: %w: %w", v.dgst, got, ErrDamaged, ErrDigestMismatch)
		} else {
			v.err = io.EOF
		}
	case err != nil:
		v.err = fmt.Errorf("read cached blob %s: %w", v.dgst, err)
		return n, v.err
	default:
		return n, nil
	}
	if v.err != io.EOF {
		v.onCorrupt()
		return 0, v.err // the bytes of a bad blob are not passed on
	}
	return n, v.err
}

func (v *verifiedReader) Close() error { return v.rc.Close() }

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
//
// Two ingests of one digest (two upstreams' downloads) may both commit:
// each writes its own temporary object, and the move replaces one verified
// blob with the same bytes whole (a rename on the filesystem, an object put
// whole on S3), so a reader sees either, never a mix, and one that opened
// the first reads it to its end.
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
	in.store.sizes.Add(in.dgst, in.written)
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
	// Close hands the writer's buffer back (S3). After Cancel it can only
	// say that the writer is already closed (filesystem) or that the
	// cancelled upload took no last part (S3): nothing about the blob.
	_ = in.fw.Close()
	if err != nil {
		return fmt.Errorf("cancel blob %s: %w", in.dgst, err)
	}
	return nil
}

// Verify checks what was written against the expected digest and size
// without finishing the ingest, so that a caller can record what the bytes
// being right means before anyone can read them (Commit checks again).
func (in *Ingest) Verify() error {
	if in.dgst == "" {
		return errors.New("verify: produced content has no expected digest")
	}
	return in.verify()
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
