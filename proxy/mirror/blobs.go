package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Blob is a blob opened for a client: from the cache, or from the spool of
// the download that is fetching it.
type Blob struct {
	io.ReadSeeker
	// Source is where it is read from: "cache" or "upstream".
	Source string
	// Fetched is set when it was not in the cache when asked for: it was
	// downloaded or rebuilt.
	Fetched bool
	// MediaType is what it is sent as (mediatype.OfBlob): a manifest's own
	// type, else application/octet-stream. Set for a client's read
	// (OpenBlob) only.
	MediaType string
	close     func() error
}

// Close releases the blob.
func (b *Blob) Close() error { return b.close() }

// Err is why a read from a download's spool ended early, which
// http.ServeContent does not say; nil for a cached blob.
func (b *Blob) Err() error {
	if sr, ok := b.ReadSeeker.(*blobfetch.Reader); ok {
		return sr.Err()
	}
	return nil
}

// BlobInfo is what a blob's HEAD answers.
type BlobInfo struct {
	// Size is -1 when the upstream did not say.
	Size int64
	// Source is who answered: "cache" or "upstream".
	Source string
	// MediaType is what a GET sends it as (Blob.MediaType).
	MediaType string
}

// StatBlob is dgst's size and type: from the cache for an admitted client,
// else the upstream's answer to the client. A repackaged layer that was
// evicted is rebuilt first: upstream never had it. A blob larger than a
// manifest can be is not read. One that may be a manifest is read as a GET
// reads it (OpenBlob), since its type is its bytes': a HEAD of an uncached
// one downloads and caches it.
func (r *Repository) StatBlob(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	s := r.s
	info, err := s.store.StatBlob(ctx, dgst)
	if err != nil {
		if d, derr := s.store.GetDerived(ctx, dgst); derr != nil || d.Kind != cache.DerivedLayer {
			up, err := r.statUpstream(ctx, dgst)
			if err != nil || up.Size > mediatype.MaxManifestSize {
				return up, err
			}
			// Small, or of a size the upstream did not say.
			return r.statSmall(ctx, dgst)
		}
		b, err := r.open(ctx, dgst, 0, statOnly) // admits, and rebuilds
		if err != nil {
			return BlobInfo{}, err
		}
		b.Close()
		if info, err = s.store.StatBlob(ctx, dgst); err != nil {
			return BlobInfo{}, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "rebuilt blob vanished from the cache", err)
		}
	} else if err := r.admit(ctx, object{dgst: dgst, blob: true}); err != nil {
		return BlobInfo{}, err
	}
	if info.Size <= mediatype.MaxManifestSize {
		return r.statSmall(ctx, dgst)
	}
	return BlobInfo{Size: info.Size, Source: "cache", MediaType: mediatype.OctetStream}, nil
}

// statSmall answers a HEAD of a blob that may be a manifest from its bytes,
// read as a GET reads them.
func (r *Repository) statSmall(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	b, err := r.open(ctx, dgst, 0, plainRead)
	if err != nil {
		return BlobInfo{}, err
	}
	defer b.Close()
	size, err := b.Seek(0, io.SeekEnd)
	if err != nil {
		return BlobInfo{}, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob size unknown", err)
	}
	return BlobInfo{Size: size, Source: b.Source, MediaType: b.MediaType}, nil
}

// statUpstream is the upstream's answer to the client about an uncached
// blob, without downloading it.
func (r *Repository) statUpstream(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	size, err := r.remote.HeadBlob(ctx, dgst)
	if err != nil {
		return BlobInfo{}, err
	}
	if err := r.remote.CheckBlobSize(size); err != nil {
		return BlobInfo{}, err // a GET would be refused: say so now
	}
	r.learn(ctx, dgst)
	r.remote.Confirm(r.s.clock.Now())
	return BlobInfo{Size: size, Source: "upstream", MediaType: mediatype.OctetStream}, nil
}

// OpenBlob opens dgst for the client, from offset on (see open).
func (r *Repository) OpenBlob(ctx context.Context, dgst digest.Digest, offset int64) (*Blob, error) {
	return r.open(ctx, dgst, offset, plainRead)
}

// open opens dgst for the client, from offset on: the one way to read a
// blob, for clients and rules alike.
//
// The client is admitted first (access.go): from what regnorm knows, else by
// asking the upstream as the client; a download it starts asks the upstream
// itself. Then the blob comes from the cache; a repackaged layer that was
// evicted is rebuilt, as the client; anything else is downloaded, or read
// from the download under way. how says what the caller reads (readMode).
func (r *Repository) open(ctx context.Context, dgst digest.Digest, offset int64, how readMode) (*Blob, error) {
	s := r.s
	o := object{dgst: dgst, blob: true}
	admitted, sub, err := r.admitted(ctx, o)
	if err != nil {
		return nil, errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	if !admitted && sub.dgst != dgst {
		// Made here: only the upstream can say whether its source is held.
		if err := r.ask(ctx, o, sub); err != nil {
			return nil, err
		}
		admitted = true
	}
	if !admitted {
		if _, err := s.store.StatBlob(ctx, dgst); err == nil {
			if err := r.ask(ctx, o, sub); err != nil {
				return nil, err
			}
			admitted = true
		}
	}
	if admitted {
		if b, err := s.openFromCache(ctx, dgst, offset, how); b != nil || err != nil {
			return b, err
		}
		switch d, err := s.store.GetDerived(ctx, dgst); {
		case err == nil && d.Kind == cache.DerivedLayer:
			// A repackaged layer exists only here: it was evicted; rebuild it.
			if err := r.rebuildLayer(ctx, d); err != nil {
				return nil, err
			}
			if b, err := s.openFromCache(ctx, dgst, offset, how); b != nil || err != nil {
				return fetched(b), err
			}
			return nil, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "rebuilt blob vanished from the cache", nil)
		case err == nil:
			return nil, errcode.New(http.StatusNotFound, errcode.BlobUnknown, "blob unknown", nil)
		}
	}

	// The download runs on its own context: the request pays for it here.
	if err := upstream.Spend(ctx); err != nil {
		return nil, err
	}
	f, err := s.fetches.Join(r.remote, dgst)
	if err != nil {
		return nil, err
	}
	if !admitted && !f.StartedBy(r.remote) {
		// Someone else's download: its answer is not this client's.
		if err := r.ask(ctx, o, sub); err != nil {
			f.Done()
			return nil, err
		}
		admitted = true
	}
	if f, err = s.fetches.Ready(ctx, f, r.remote); err != nil {
		return nil, err
	}
	if !admitted && !f.Answered() {
		// The download found the blob already cached (another one had just
		// published it) and asked nobody: ask for this client.
		if err := r.ask(ctx, o, sub); err != nil {
			f.Done()
			return nil, err
		}
	}
	sr, err := f.Tail(ctx)
	if err != nil {
		return nil, err
	}
	if sr != nil {
		b := &Blob{ReadSeeker: sr, Source: "upstream", Fetched: true, MediaType: mediatype.OctetStream, close: sr.Close}
		if how != plainRead {
			return b, nil
		}
		return s.typed(ctx, b)
	}
	// Nothing to tail: read the verified blob from the cache.
	if b, err := s.openFromCache(ctx, dgst, offset, how); b != nil || err != nil {
		return fetched(b), err
	}
	return nil, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob vanished from the cache", nil)
}

func fetched(b *Blob) *Blob {
	if b != nil {
		b.Fetched = true
	}
	return b
}

// readMode is what a caller of open reads.
type readMode int

const (
	// plainRead is a client's read: a blob larger than a manifest can be
	// (mediatype.MaxManifestSize) is read as it is stored (the client
	// checks the digest itself) and sent as application/octet-stream; a
	// smaller one is read whole, verified, into memory (held), and sent as
	// what its bytes are (mediatype.OfBlob).
	plainRead readMode = iota
	// verifiedRead checks the digest (for content a rule builds on): a
	// cached blob is hashed as it is read, and a download's spool is
	// verified by construction, since its last byte waits for the
	// download's own check.
	verifiedRead
	// statOnly reads nothing from the cache: the caller wants the blob
	// there (admitted, downloaded or rebuilt), and a cached one answers
	// with a Blob that holds no reader. A download under way is still
	// returned, to be waited for.
	statOnly
)

// openFromCache opens a cached blob as how says; nil and no error when it
// is not there. A cache that fails to answer is logged and treated as a
// miss: upstream can still serve.
func (s *Service) openFromCache(ctx context.Context, dgst digest.Digest, offset int64, how readMode) (*Blob, error) {
	var rc io.ReadSeekCloser
	var err error
	switch how {
	case statOnly:
		if _, err = s.store.StatBlob(ctx, dgst); err == nil {
			return &Blob{Source: "cache", close: func() error { return nil }}, nil
		}
	case verifiedRead:
		var vr io.ReadCloser
		if vr, _, err = s.store.OpenVerified(ctx, dgst); err == nil {
			rc = forwardOnly{vr}
		}
	default:
		// The size decides how it is read: asked first, it costs OpenBlob
		// nothing more (cache.Store.BlobSize).
		var size int64
		if size, err = s.store.BlobSize(ctx, dgst); err == nil && size <= mediatype.MaxManifestSize {
			return s.readSmall(ctx, dgst, size)
		}
		if err == nil {
			rc, _, err = s.store.OpenBlob(ctx, dgst, offset)
		}
	}
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) {
			s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
		}
		return nil, nil
	}
	return &Blob{ReadSeeker: rc, Source: "cache", MediaType: mediatype.OctetStream, close: rc.Close}, nil
}

// readSmall reads a cached blob of size bytes (no larger than a manifest)
// whole, verified, and types it; nil and no error when it is not there, or
// no longer (a blob that fails verification is removed, and fetched again).
func (s *Service) readSmall(ctx context.Context, dgst digest.Digest, size int64) (*Blob, error) {
	if err := s.held.Acquire(ctx, size); err != nil {
		return nil, err
	}
	release := func() error { s.held.Release(size); return nil }
	vr, info, err := s.store.OpenVerified(ctx, dgst)
	if err == nil && info.Size != size {
		vr.Close()
		err = fmt.Errorf("cached blob %s: %d bytes, was %d", dgst, info.Size, size)
	}
	var content []byte
	if err == nil {
		content, err = readAll(vr, size)
		vr.Close()
	}
	if err != nil {
		release()
		if !errors.Is(err, cache.ErrNotFound) {
			s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
		}
		return nil, nil
	}
	return &Blob{ReadSeeker: bytes.NewReader(content), Source: "cache", MediaType: mediatype.OfBlob(content), close: release}, nil
}

// typed is b, a download's spool, for a client: a blob that may be a
// manifest is read whole (its last byte comes once the download has
// verified it) and sent from memory as what it is; a larger one is sent as
// it comes.
func (s *Service) typed(ctx context.Context, b *Blob) (*Blob, error) {
	size, err := b.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = b.Seek(0, io.SeekStart)
	}
	if err != nil {
		b.Close()
		return nil, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob size unknown", err)
	}
	if size > mediatype.MaxManifestSize {
		return b, nil
	}
	defer b.Close()
	if err := s.held.Acquire(ctx, size); err != nil {
		return nil, err
	}
	content, err := readAll(b, size)
	if err != nil {
		s.held.Release(size)
		// Before any header: the client gets an error, not a short body.
		var e *errcode.Error
		if errors.As(err, &e) || ctx.Err() != nil {
			return nil, err
		}
		return nil, errcode.New(http.StatusBadGateway, errcode.Unavailable, "blob download failed", err)
	}
	return &Blob{ReadSeeker: bytes.NewReader(content), Source: b.Source, Fetched: b.Fetched, MediaType: mediatype.OfBlob(content),
		close: func() error { s.held.Release(size); return nil }}, nil
}

// readAll reads r, which must hold exactly size bytes, to its end: for a
// verified reader, that end is where the digest is checked.
func readAll(r io.Reader, size int64) ([]byte, error) {
	content := make([]byte, size)
	if _, err := io.ReadFull(r, content); err != nil {
		return nil, err
	}
	var one [1]byte
	for {
		n, err := r.Read(one[:])
		switch {
		case n > 0:
			return nil, fmt.Errorf("more than %d bytes", size)
		case err == io.EOF:
			return content, nil
		case err != nil:
			return nil, err
		}
	}
}

// forwardOnly is a verified read: it never seeks.
type forwardOnly struct{ io.ReadCloser }

func (forwardOnly) Seek(int64, int) (int64, error) {
	return 0, errors.New("a verified read does not seek")
}
