package mirror

import (
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
	"github.com/regnorm/regnorm/proxy/replicas"
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
	// type, else application/octet-stream. Only a client's read (OpenBlob)
	// learns it; a rule's read is always octet-stream, never sent.
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
// evicted is rebuilt first, unless the repository holds none of its
// sources (then it is downloaded: the upstream holds it here). A blob
// larger than a manifest can be is not read. One that may be a manifest is
// read as a GET reads it (OpenBlob), since its type is its bytes': a HEAD
// of an uncached one downloads and caches it.
func (r *Repository) StatBlob(ctx context.Context, dgst digest.Digest) (BlobInfo, error) {
	s := r.s
	info, err := s.store.StatBlob(ctx, dgst)
	if err != nil {
		if d, derr := s.store.GetDerived(ctx, dgst); derr != nil || d.Kind != cache.DerivedLayer {
			up, err := r.statUpstream(ctx, dgst)
			if err != nil || up.Size < 0 || up.Size > mediatype.MaxManifestSize {
				// Too large to be a manifest, or of a size the upstream
				// did not say (reading it to learn would be a download of
				// any size for a HEAD): application/octet-stream.
				return up, err
			}
			return r.statSmall(ctx, dgst)
		}
		b, err := r.open(ctx, dgst, 0, statOnly) // admits, and rebuilds or downloads
		if err != nil {
			return BlobInfo{}, err
		}
		if sr, ok := b.ReadSeeker.(*blobfetch.Reader); ok {
			// Downloaded: the upstream holds it here too (see open).
			err = sr.Wait()
		}
		b.Close()
		if err != nil {
			return BlobInfo{}, err
		}
		if info, err = s.store.StatBlob(ctx, dgst); err != nil {
			return BlobInfo{}, errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "rebuilt blob vanished from the cache", err)
		}
	} else if err := r.admit(ctx, object{dgst: dgst, blob: true}); err != nil {
		return BlobInfo{}, err
	}
	mt, err := s.cachedType(ctx, dgst, info.Size)
	switch {
	case err == nil:
		return BlobInfo{Size: info.Size, Source: "cache", MediaType: mt}, nil
	case ctx.Err() != nil:
		return BlobInfo{}, ctx.Err()
	}
	// Gone or damaged since the stat (a damaged copy is removed): read it
	// as a GET would, which fetches it again.
	return r.statSmall(ctx, dgst)
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
	// Its word only: the link waits for its bytes (access.go).
	r.remote.Confirm(r.s.clock.Now())
	return BlobInfo{Size: size, Source: "upstream", MediaType: mediatype.OctetStream}, nil
}

// OpenBlob opens dgst for the client, from offset on (see open). For
// another replica (ForReplica), it is a relayRead.
func (r *Repository) OpenBlob(ctx context.Context, dgst digest.Digest, offset int64) (*Blob, error) {
	if r.serves == replicas.KindBlob {
		return r.open(ctx, dgst, offset, relayRead)
	}
	return r.open(ctx, dgst, offset, plainRead)
}

// open opens dgst for the client, from offset on: the one way to read a
// blob, for clients and rules alike.
//
// The client is admitted first (access.go): from what regnorm knows, else by
// asking the upstream as the client; a download it starts asks the upstream
// itself. Then the blob comes from the cache; a repackaged layer that was
// evicted is rebuilt, as the client, from a source the repository holds;
// anything else is downloaded, or read from the download under way. how
// says what the caller reads (readMode).
func (r *Repository) open(ctx context.Context, dgst digest.Digest, offset int64, how readMode) (*Blob, error) {
	s := r.s
	o := object{dgst: dgst, blob: true}
	admitted, sub, err := r.admitted(ctx, o)
	if err != nil {
		return nil, storageFailed(err)
	}
	if !admitted && sub.dgst != dgst {
		// Made here: only the upstream can say whether its source is held.
		if err := r.ask(ctx, o, sub); err != nil {
			return nil, err
		}
		admitted = true
	}
	asked := false // the upstream said yes to the client, its word only
	if !admitted {
		if _, err := s.store.StatBlob(ctx, dgst); err == nil {
			// Cached. The upstream's yes lets the client read the cache
			// only if it sent these bytes before; else they are
			// downloaded from it all the same (below), and the client
			// reads them as they come (access.go).
			if _, err := r.askHead(ctx, o, sub); err != nil {
				return nil, err
			}
			asked = true
			switch ok, err := s.hasSent(ctx, r.remote.Upstream(), dgst); {
			case err != nil:
				return nil, storageFailed(err)
			case ok:
				r.learn(ctx, dgst)
				admitted = true
			}
		}
	}
	if admitted {
		if b, err := s.openFromCache(ctx, dgst, offset, how); b != nil || err != nil {
			return b, err
		}
		d, err := s.store.GetDerived(ctx, dgst)
		held := false
		if err == nil && d.Kind == cache.DerivedLayer {
			var origin cache.Origin
			if origin, held, err = r.heldOrigin(ctx, d); err != nil {
				return nil, storageFailed(err)
			}
			d = d.From(origin)
		}
		switch {
		case err == nil && d.Kind == cache.DerivedLayer && !held:
			// Admitted here, yet made only from what other repositories
			// hold: the upstream holds the same bytes here (see ask).
			// Downloaded, not rebuilt from a source this client may not
			// read.
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
	dl := r.download(dgst)
	f, err := s.fetches.Join(dl, dgst)
	if err != nil {
		return nil, err
	}
	if !admitted && !f.StartedBy(dl) {
		// Someone else's download from this upstream: its answer is not
		// this client's. The bytes are the upstream's own, so its word is
		// enough, if the download reads them from it (below); they are
		// the repository's once they verify.
		if !asked {
			if _, err := r.askHead(ctx, o, sub); err != nil {
				f.Done()
				return nil, err
			}
		}
		f.Also(dl)
	}
	if f, err = s.fetches.Ready(ctx, f, dl); err != nil {
		return nil, err
	}
	if !admitted && !f.Answered() {
		// The download found the blob already cached (another one had just
		// published it) and asked nobody: the client reads the cache, and
		// is admitted as for a cached blob: by the link that download
		// recorded, else by asking about the blob itself (the upstream
		// sent it).
		if admitted, _, err = r.admitted(ctx, o); err != nil {
			f.Done()
			return nil, storageFailed(err)
		}
		if !admitted {
			if err := r.ask(ctx, o, o); err != nil {
				f.Done()
				return nil, err
			}
		}
	}
	if how == relayRead && !f.Spooled() && f.Answered() {
		// It would be read from the cache once whole: the asker does
		// better to download it itself than to wait with no answer. (A
		// download that found the blob cached asked nobody, and is over:
		// the cache has it now.)
		f.Done()
		return nil, errcode.Busy("this replica's download of the blob has no room to spool; download it yourself", nil)
	}
	sr, err := f.Tail(ctx)
	if err != nil {
		return nil, err
	}
	if sr != nil {
		b := &Blob{ReadSeeker: sr, Source: "upstream", Fetched: true, MediaType: mediatype.OctetStream, close: sr.Close}
		if how == plainRead {
			if err := s.typeDownload(ctx, dgst, b, sr); err != nil {
				sr.Close()
				return nil, err
			}
		}
		return b, nil
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
	// plainRead is a client's read: the blob as it is stored (the client
	// checks the digest itself), sent as what its bytes are
	// (mediatype.OfBlob; see typeOf).
	plainRead readMode = iota
	// verifiedRead checks the digest (for content a rule builds on): a
	// cached blob is hashed as it is read, and a download's spool is
	// verified by construction, since its last byte waits for the
	// download's own check.
	verifiedRead
	// relayRead is another replica's read, which relays the blob to its
	// own clients: as it is stored, or from the download as it comes (its
	// type is the asker's to learn), and only from a download that spools.
	relayRead
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
	mt := mediatype.OctetStream
	switch how {
	case statOnly:
		if _, err = s.store.StatBlob(ctx, dgst); err == nil {
			return &Blob{Source: "cache", close: func() error { return nil }}, nil
		}
	case relayRead:
		rc, _, err = s.store.OpenBlob(ctx, dgst, offset)
	case verifiedRead:
		var vr io.ReadCloser
		if vr, _, err = s.store.OpenVerified(ctx, dgst); err == nil {
			rc = forwardOnly{vr}
		}
	default:
		// The size says whether it may be a manifest: asked first, it costs
		// OpenBlob nothing more (cache.Store.BlobSize). A blob whose type
		// is not known yet is read once, verified, to learn it.
		var size int64
		if size, err = s.store.BlobSize(ctx, dgst); err == nil {
			if mt, err = s.cachedType(ctx, dgst, size); err == nil {
				rc, _, err = s.store.OpenBlob(ctx, dgst, offset)
			}
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, cache.ErrNotFound) {
			s.log.Warn("cache read failed, trying upstream", "digest", dgst, "error", err)
		}
		return nil, nil
	}
	return &Blob{ReadSeeker: rc, Source: "cache", MediaType: mt, close: rc.Close}, nil
}

// A blob's type is a function of its verified bytes alone (mediatype.OfBlob),
// so it holds for every repository, upstream and client: a blob that may be
// a manifest is read once to learn it, and the type is remembered by
// digest. Its bytes are held in memory only while they are typed, from the
// cache or a finished download's spool, both local and verified; never
// while a client or an upstream sets the pace.

// cachedType is the type of a cached blob of size bytes: learnt once
// however many ask at the same time (after a restart, every client of a
// blob asks), by one verified read.
func (s *Service) cachedType(ctx context.Context, dgst digest.Digest, size int64) (string, error) {
	if size > mediatype.MaxManifestSize {
		return mediatype.OctetStream, nil
	}
	if mt, ok := s.types.Get(dgst); ok {
		return mt, nil
	}
	return s.typings.Do(ctx, fmt.Sprintf("%s %d", dgst, size), func(ctx context.Context) (string, error) {
		return s.typeOf(ctx, dgst, size, func() (io.ReadCloser, error) {
			vr, _, err := s.store.OpenVerified(ctx, dgst)
			return vr, err
		})
	})
}

// typeOf is the type of dgst, of size bytes: remembered, else read from
// what open opens (a verified read).
func (s *Service) typeOf(ctx context.Context, dgst digest.Digest, size int64, open func() (io.ReadCloser, error)) (string, error) {
	if size > mediatype.MaxManifestSize {
		return mediatype.OctetStream, nil
	}
	if mt, ok := s.types.Get(dgst); ok {
		return mt, nil
	}
	if err := s.typing.Acquire(ctx, size); err != nil {
		return "", err
	}
	defer s.typing.Release(size)
	rc, err := open()
	if err != nil {
		return "", err
	}
	content, err := readAll(rc, size)
	rc.Close()
	if err != nil {
		return "", err
	}
	mt := mediatype.OfBlob(content)
	s.types.Add(dgst, mt)
	return mt, nil
}

// typeDownload sets the type of b, which reads sr, a download's spool of
// dgst. A blob that may be a manifest waits for the download to end
// (verified) before any header is sent, and is typed from the spool; a
// larger one is sent as it comes, as application/octet-stream.
func (s *Service) typeDownload(ctx context.Context, dgst digest.Digest, b *Blob, sr *blobfetch.Reader) error {
	size, err := sr.Seek(0, io.SeekEnd)
	if err != nil {
		return errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob size unknown", err)
	}
	if size <= mediatype.MaxManifestSize {
		if err := sr.Wait(); err != nil {
			// Before any header: the client gets an error, not a short body.
			return downloadFailed(ctx, err)
		}
		if _, err := sr.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if b.MediaType, err = s.typeOf(ctx, dgst, size, func() (io.ReadCloser, error) { return io.NopCloser(sr), nil }); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errcode.New(http.StatusBadGateway, errcode.Unavailable, "read downloaded blob", err)
		}
	}
	_, err = sr.Seek(0, io.SeekStart)
	return err
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

// downloadFailed is how a download's failure is told to a client that has
// no header yet: as the error it is when it is an answer (an upstream's
// refusal, a limit), else 502.
func downloadFailed(ctx context.Context, err error) error {
	var e *errcode.Error
	if errors.As(err, &e) || ctx.Err() != nil {
		return err
	}
	return errcode.New(http.StatusBadGateway, errcode.Unavailable, "blob download failed", err)
}
