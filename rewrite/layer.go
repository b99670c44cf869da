package rewrite

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayerScan is what scanning a layer found.
type LayerScan struct {
	Compression Compression
	Entries     int
	// OriginalDiffID is the diff ID of the layer as read: the digest of its
	// whole decompressed stream, as containerd computes it on extraction.
	// ScanLayer sets it, in the same pass (the diff IDs rule takes it from
	// there for free).
	OriginalDiffID digest.Digest
	// Stripped is how many entries lose xattrs; 0 means the layer is clean
	// and is served untouched.
	Stripped int
	// Removals lists what the symlink xattr rule removes, for the first
	// entries, within the bounds in xattr.go; Unlisted counts the others.
	Removals []XattrRemoval
	// removalBytes is what Removals holds: its paths and keys.
	removalBytes int
	// Sparse is how many GNU sparse entries (typeflag 'S') the layer has,
	// which a repackaging writes as regular files; Expanded lists the
	// first of their paths, within the bounds of Removals.
	Sparse   int
	Expanded []string
	// expandedBytes is what Expanded holds.
	expandedBytes int
}

// Clean reports whether the layer needs nothing: no xattr to strip, no
// GNU sparse entry.
func (s LayerScan) Clean() bool { return s.Stripped == 0 && s.Sparse == 0 }

// Unlisted is how many stripped entries Removals leaves out.
func (s LayerScan) Unlisted() int { return max(0, s.Stripped-len(s.Removals)) }

// Unexpanded is how many GNU sparse entries Expanded leaves out.
func (s LayerScan) Unexpanded() int { return max(0, s.Sparse-len(s.Expanded)) }

// Rewrote reports whether the layer's tar was rewritten (xattrs stripped or
// sparse entries expanded), rather than recompressed byte for byte.
func (s LayerScan) Rewrote() bool { return s.Stripped > 0 || s.Sparse > 0 }

// LayerResult describes a repackaged layer.
type LayerResult struct {
	LayerScan
	// Digest and Size are those of the repackaged, compressed blob.
	Digest digest.Digest
	Size   int64
	// DiffID is the digest of the repackaged, uncompressed tar.
	DiffID digest.Digest
	// MediaType, when set, is the layer's new media type (its compression
	// changed).
	MediaType string
	// Transform is what was done to make it.
	Transform LayerTransform
}

// ErrNotTar means a layer blob is not a (compressed) tar stream regnorm reads.
var ErrNotTar = errors.New("not a tar layer")

// ErrLayerTooLarge means a layer decompresses to more than the limit it was
// read with: a decompression bomb, or a layer too large to be worth it.
var ErrLayerTooLarge = errors.New("layer decompresses beyond the limit")

// ErrHolesBeyondLimit means a repackaging would fill more holes of GNU
// sparse entries than the limit it was made with (Limits.Holes).
var ErrHolesBeyondLimit = errors.New("sparse entries' holes beyond the limit")

// ErrZstdWindow means a zstd frame of the layer declares a window larger
// than the limit it was read with: decoding it would take that much memory.
var ErrZstdWindow = errors.New("zstd window beyond the limit")

// Limits bound what reading a layer may take, whatever the layer says.
type Limits struct {
	// Size bounds the decompressed stream (0: no bound), and the tar a
	// repackaging writes (with sparse files expanded) unless Unwritten; a
	// layer that expands further is ErrLayerTooLarge.
	Size int64
	// Unwritten leaves what a repackaging writes bounded by nothing but
	// what it reads: for a rebuild, whose bytes are pinned by the digest
	// they must come out as, made by a version that may have had no bound
	// on them.
	Unwritten bool
	// ZstdWindow bounds the window a zstd frame may declare, and so the
	// memory its decoder holds (0: DefaultZstdWindow); a layer with a frame
	// that declares more is ErrZstdWindow, found from the frame's header
	// before anything is allocated for it.
	ZstdWindow int64
	// Holes bounds what a repackaging writes beyond what it reads: the
	// holes of sparse files it fills with zeros (GNU 'S' entries, and PAX
	// sparse files, which archive/tar also writes expanded; 0: no bound).
	// An entry of a few bytes may declare gigabytes of holes, which cost a
	// repackaging their writing and compressing; a layer that fills more
	// is ErrHolesBeyondLimit.
	Holes int64
}

// DefaultZstdWindow is the window every zstd decoder is asked to support
// (RFC 8878, section 3.1.1.1.2): the reference levels 1 to 19, and
// klauspost/compress at every level (containerd's and buildkit's encoder),
// stay within it. Levels 20 to 22 (--ultra) and long-distance matching
// (--long) declare more.
const DefaultZstdWindow = 8 << 20

func (l Limits) zstdWindow() int64 {
	if l.ZstdWindow <= 0 {
		return DefaultZstdWindow
	}
	return min(max(l.ZstdWindow, zstd.MinWindowSize), 1<<40) // what the decoder accepts
}

// ScanLayer reads a layer blob (gzip, zstd or plain tar) and reports what
// the symlink xattr rule would remove and the GNU sparse entries the sparse
// rule would expand, from the headers alone. It decompresses but never compresses,
// so a clean layer costs one decompression. A layer beyond lim is
// ErrLayerTooLarge or ErrZstdWindow.
//
// It reads blob to its end, past the end of the archive, so that a source
// that checks what it delivers (a digest at the end of the stream) has its
// say; an error from blob is returned as it is (wrapped), never taken for
// the end of the layer.
func ScanLayer(blob io.Reader, lim Limits) (LayerScan, error) {
	l, err := openLayer(blob, lim)
	if err != nil {
		return LayerScan{}, err
	}
	defer l.close()
	// The diff ID is hashed on this goroutine as the tar reader (and then
	// drain) reads, while the read-ahead decompresses on its own.
	h := sha256.New()
	l.rest = io.TeeReader(l.rest, h)
	l.tr = tar.NewReader(l.rest)
	tr := l.tr
	scan := LayerScan{Compression: l.comp}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if err := l.drain(); err != nil {
				return LayerScan{}, err
			}
			scan.OriginalDiffID = digest.NewDigest(digest.SHA256, h)
			return scan, nil
		}
		if err != nil {
			return LayerScan{}, l.fail(fmt.Errorf("%w: %v", ErrNotTar, err))
		}
		scan.Entries++
		scan.record(hdr.Name, strippableXattrs(hdr))
		if isGNUSparse(hdr) {
			scan.recordSparse(hdr.Name)
		}
	}
}

// IsScannableLayer reports whether a layer of this media type is one
// containerd (1.4 to 2.x) unpacks from the registry: Docker's and OCI's
// layer types, uncompressed, gzip or zstd. The compression is read from the
// blob's first bytes, not from the type, and kept when it is repackaged.
//
// Foreign (Docker) and non-distributable (OCI) layers are not: they
// typically live outside the registry (Windows base layers, at the URLs
// their descriptor lists), and a registry mirror must not fetch them.
// Encrypted layers cannot be read. All of these are served as listed.
func IsScannableLayer(mediaType string) bool {
	switch mediaType {
	case MediaTypeDockerLayer, MediaTypeDockerLayerGzip, MediaTypeDockerLayerZstd,
		ocispec.MediaTypeImageLayer, ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd:
		return true
	}
	return false
}
