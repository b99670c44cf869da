package rewrite

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// KindSymlinkXattrs: a layer was repackaged without the xattrs the kernel
// refuses on symlinks and other special files.
const KindSymlinkXattrs = "symlink-xattrs"

// Compression is a layer's compression, kept when it is repackaged.
type Compression string

// Compressions regnorm reads and writes.
const (
	Uncompressed Compression = "none"
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
)

// The settings that make repackaged layers byte-identical on every replica:
// a pinned library (klauspost/compress, in go.mod), a fixed level, a single
// zstd encoder thread, and gzip headers with no name and no time.
const (
	gzipLevel = gzip.DefaultCompression
	zstdLevel = zstd.SpeedDefault
)

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// XattrRemoval is the xattr keys removed from one tar entry, as recorded:
// a path or key longer than the record keeps ends in "…", and MoreKeys
// counts the keys beyond those listed.
type XattrRemoval struct {
	Path     string   `json:"path"`
	Keys     []string `json:"keys"`
	MoreKeys int      `json:"moreKeys,omitempty"`
}

// LayerScan is what scanning a layer found.
type LayerScan struct {
	Compression Compression
	Entries     int
	// Stripped is how many entries lose xattrs; 0 means the layer is clean
	// and is served untouched.
	Stripped int
	// Removals lists what the symlink xattr rule removes, for the first
	// entries, within the bounds below; Unlisted counts the others.
	Removals []XattrRemoval
	// removalBytes is what Removals holds: its paths and keys.
	removalBytes int
}

// Clean reports whether the layer needs nothing.
func (s LayerScan) Clean() bool { return s.Stripped == 0 }

// Unlisted is how many stripped entries Removals leaves out.
func (s LayerScan) Unlisted() int { return max(0, s.Stripped-len(s.Removals)) }

// What a scan lists of the entries it strips. Paths, keys and their number
// come from the layer (tar allows paths and PAX records of a megabyte), and
// the list goes into records, reports and pages: each is bounded, in bytes
// and in number, so that a layer's size is never a record's. Only what is
// listed is cut; what the layer becomes is not.
const (
	// maxRecordedRemovals bounds the entries listed; Stripped counts all.
	maxRecordedRemovals = 100
	// maxRecordedBytes bounds the paths and keys listed, together.
	maxRecordedBytes = 16 << 10
	// maxRecordedPath and maxRecordedKey bound one path and one key.
	maxRecordedPath = 256
	maxRecordedKey  = 128
	// maxRecordedKeys bounds the keys listed for one entry.
	maxRecordedKeys = 8
)

// record notes an entry whose xattrs keys the rule removes.
func (s *LayerScan) record(path string, keys []string) {
	if len(keys) == 0 {
		return
	}
	s.Stripped++
	if len(s.Removals) >= maxRecordedRemovals {
		return
	}
	r := XattrRemoval{Path: clip(path, maxRecordedPath), MoreKeys: max(0, len(keys)-maxRecordedKeys)}
	size := len(r.Path)
	for _, k := range keys[:len(keys)-r.MoreKeys] {
		k = clip(k, maxRecordedKey)
		r.Keys = append(r.Keys, k)
		size += len(k)
	}
	if s.removalBytes+size > maxRecordedBytes {
		s.removalBytes = maxRecordedBytes // the list ends here
		return
	}
	s.removalBytes += size
	s.Removals = append(s.Removals, r)
}

// clipMark ends a recorded string that was cut.
const clipMark = "…"

// clip cuts s to at most n bytes (n > len(clipMark)), at a rune boundary
// where s is UTF-8, ending it in clipMark when it cut: the same s always
// gives the same result. The result is always a copy: archive/tar's names
// and keys are slices of the entry's whole PAX header (up to a megabyte),
// which a record must not keep alive.
func clip(s string, n int) string {
	if len(s) <= n {
		return strings.Clone(s)
	}
	cut := n - len(clipMark)
	for i := cut; i > cut-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			cut = i
			break
		}
	}
	return s[:cut] + clipMark
}

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
}

// ErrNotTar means a layer blob is not a (compressed) tar stream regnorm reads.
var ErrNotTar = errors.New("not a tar layer")

// ErrLayerTooLarge means a layer decompresses to more than the limit it was
// read with: a decompression bomb, or a layer too large to be worth it.
var ErrLayerTooLarge = errors.New("layer decompresses beyond the limit")

// ErrZstdWindow means a zstd frame of the layer declares a window larger
// than the limit it was read with: decoding it would take that much memory.
var ErrZstdWindow = errors.New("zstd window beyond the limit")

// Limits bound what reading a layer may take, whatever the layer says.
type Limits struct {
	// Size bounds the decompressed stream (0: no bound); a layer that
	// expands further is ErrLayerTooLarge.
	Size int64
	// ZstdWindow bounds the window a zstd frame may declare, and so the
	// memory its decoder holds (0: DefaultZstdWindow); a layer with a frame
	// that declares more is ErrZstdWindow, found from the frame's header
	// before anything is allocated for it.
	ZstdWindow int64
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
// the symlink xattr rule would remove. It decompresses but never compresses,
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
	tr := l.tr
	scan := LayerScan{Compression: l.comp}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if err := l.drain(); err != nil {
				return LayerScan{}, err
			}
			return scan, nil
		}
		if err != nil {
			return LayerScan{}, l.fail(fmt.Errorf("%w: %v", ErrNotTar, err))
		}
		scan.Entries++
		scan.record(hdr.Name, strippableXattrs(hdr))
	}
}

// RepackLayer writes blob to dst without the xattrs that the kernel refuses
// on symlinks, devices and FIFOs, keeping the compression. Names, modes,
// owners, times, link targets, contents, the xattrs of regular files and
// directories, whiteouts and the order of entries are kept. The digests of
// the output are computed in the same pass that writes it.
//
// Every entry goes through archive/tar's writer, which cannot reproduce
// every header byte for byte: PAX records are written in sorted order, GNU
// sparse files are written expanded, and numeric fields use its own
// encoding. What an extraction produces is unchanged.
//
// A layer beyond lim is ErrLayerTooLarge or ErrZstdWindow. Like ScanLayer,
// it reads blob to its end and returns blob's errors.
func RepackLayer(dst io.Writer, blob io.Reader, lim Limits) (LayerResult, error) {
	return TransformLayer(dst, blob, lim, LayerTransform{Strip: true})
}

// LayerTransform is what is done to a layer: the symlink xattr rule's
// repackaging (Strip), a new compression (To; empty keeps the layer's), or
// both. Without Strip the tar stream is copied byte for byte, so its diff
// ID stays.
type LayerTransform struct {
	Strip bool
	To    Compression
}

// Key names t in records ("" for the symlink rule's repackaging alone).
func (t LayerTransform) Key() string {
	switch {
	case t.To == "":
		return ""
	case t.Strip:
		return "strip," + string(t.To)
	}
	return string(t.To)
}

// ParseLayerTransform reads a Key.
func ParseLayerTransform(key string) (LayerTransform, error) {
	strip, to, found := strings.Cut(key, ",")
	switch {
	case key == "":
		return LayerTransform{Strip: true}, nil
	case found && strip == "strip":
		return LayerTransform{Strip: true, To: Compression(to)}, nil
	case !found:
		return LayerTransform{To: Compression(key)}, nil
	}
	return LayerTransform{}, fmt.Errorf("unknown layer transform %q", key)
}

// TransformLayer writes blob to dst as t says, hashing the output in the
// same pass. With Strip it is RepackLayer, writing t.To when set. Without,
// the decompressed stream is recompressed to t.To byte for byte: the tar
// and its diff ID are the layer's own. Deterministic, like RepackLayer.
func TransformLayer(dst io.Writer, blob io.Reader, lim Limits, t LayerTransform) (LayerResult, error) {
	l, err := openLayer(blob, lim)
	if err != nil {
		return LayerResult{}, err
	}
	defer l.close()
	tr, comp := l.tr, l.comp
	if t.To != "" {
		comp = t.To
	}
	// A failure to write the output is the writer's (a full disk, a failed
	// upload), never a verdict on the layer.
	out := &sinkWriter{w: dst}
	notTar := func(err error) error {
		if out.err != nil && l.src.err == nil {
			l.close()
			return fmt.Errorf("write layer: %w", out.err)
		}
		return l.fail(fmt.Errorf("%w: %v", ErrNotTar, err))
	}
	if !t.Strip {
		return recompress(out, l, comp, notTar)
	}

	compressedHash, compressedSize := sha256.New(), &countWriter{}
	zw, err := newCompressor(io.MultiWriter(out, compressedHash, compressedSize), comp)
	if err != nil {
		return LayerResult{}, err
	}
	diffIDHash := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diffIDHash))

	res := LayerResult{LayerScan: LayerScan{Compression: comp}}
	buf := make([]byte, 256<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if err := l.drain(); err != nil {
				return LayerResult{}, err
			}
			break
		}
		if err != nil {
			return LayerResult{}, l.fail(fmt.Errorf("%w: %v", ErrNotTar, err))
		}
		res.Entries++
		if keys := strippableXattrs(hdr); len(keys) > 0 {
			res.record(hdr.Name, keys)
			for _, k := range keys {
				delete(hdr.PAXRecords, k)
			}
		}
		hdr.Xattrs = nil //nolint:staticcheck // PAXRecords holds the same records; both would be written
		if err := tw.WriteHeader(hdr); err != nil {
			return LayerResult{}, notTar(fmt.Errorf("rewrite %s: %v", hdr.Name, err))
		}
		if _, err := io.CopyBuffer(tw, tr, buf); err != nil {
			return LayerResult{}, notTar(fmt.Errorf("copy %s: %v", hdr.Name, err))
		}
	}
	if err := tw.Close(); err != nil {
		return LayerResult{}, err
	}
	if err := zw.Close(); err != nil {
		return LayerResult{}, err
	}
	res.Digest = digestOf(compressedHash)
	res.Size = compressedSize.n
	res.DiffID = digestOf(diffIDHash)
	return res, nil
}

// recompress copies l's decompressed stream to dst, compressed with comp;
// notTar makes the error of a copy that failed.
func recompress(dst io.Writer, l *layerReader, comp Compression, notTar func(error) error) (LayerResult, error) {
	compressedHash, compressedSize := sha256.New(), &countWriter{}
	zw, err := newCompressor(io.MultiWriter(dst, compressedHash, compressedSize), comp)
	if err != nil {
		return LayerResult{}, err
	}
	diffIDHash := sha256.New()
	if _, err := io.Copy(io.MultiWriter(zw, diffIDHash), l.rest); err != nil {
		return LayerResult{}, notTar(err)
	}
	l.src.drain()
	if l.src.err != nil {
		return LayerResult{}, l.src.cause(nil)
	}
	if err := zw.Close(); err != nil {
		return LayerResult{}, err
	}
	return LayerResult{LayerScan: LayerScan{Compression: comp}, Digest: digestOf(compressedHash), Size: compressedSize.n,
		DiffID: digestOf(diffIDHash)}, nil
}

// sinkWriter remembers the first failure of the writer a layer goes to.
type sinkWriter struct {
	w   io.Writer
	err error
}

func (s *sinkWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// LayerMediaType is mediaType (a layer type of Docker's or OCI's) for a
// layer compressed with comp, in the same family.
func LayerMediaType(mediaType string, comp Compression) string {
	if strings.HasPrefix(mediaType, MediaTypeDockerLayer) {
		switch comp {
		case Gzip:
			return MediaTypeDockerLayerGzip
		case Zstd:
			return MediaTypeDockerLayerZstd
		}
		return MediaTypeDockerLayer
	}
	switch comp {
	case Gzip:
		return ocispec.MediaTypeImageLayerGzip
	case Zstd:
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}

// strippableXattrs returns the xattr records of hdr that the rule removes:
// all of them on an entry that is not a regular file, hard link or
// directory. Sorted, so reports are deterministic.
func strippableXattrs(hdr *tar.Header) []string {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeLink, tar.TypeDir, tar.TypeGNUSparse, tar.TypeXGlobalHeader: //nolint:staticcheck // TypeRegA still appears in old layers
		return nil
	}
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") || strings.HasPrefix(k, "LIBARCHIVE.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// layerReader is an opened layer: a tar reader over the decompressed
// stream, which runs ahead in its own goroutine (aheadReader).
type layerReader struct {
	tr    *tar.Reader
	rest  io.Reader // the decompressed stream the tar reader reads
	comp  Compression
	src   *sourceReader
	limit *limitReader // nil: no limit
	zstd  *zstdFrames  // nil: not zstd
	close func()
}

// drain reads what follows the end of the archive to the end of the
// stream (padding, usually), as containerd does when it computes a diff ID.
func (l *layerReader) drain() error {
	if _, err := io.Copy(io.Discard, l.rest); err != nil {
		return l.fail(fmt.Errorf("%w: after the end of the archive: %v", ErrNotTar, err))
	}
	return nil
}

// fail ends a read that found the layer wanting: it stops the read-ahead,
// reads the rest of the blob so that a source that fails (or checks its
// digest at the end) has its say, and returns what really ended the read:
// the source's failure, else a limit, else err. A verdict on the
// layer (ErrNotTar, ErrLayerTooLarge) therefore always comes from a blob
// read whole without a source error.
func (l *layerReader) fail(err error) error {
	l.close()
	l.src.drain()
	if l.src.err != nil {
		return l.src.cause(err)
	}
	if l.limit != nil && l.limit.exceeded {
		return fmt.Errorf("%w: more than %d bytes", ErrLayerTooLarge, l.limit.max)
	}
	if l.zstd != nil && l.zstd.declared > 0 {
		return fmt.Errorf("%w: a frame declares %d bytes, more than %d", ErrZstdWindow, l.zstd.declared, l.zstd.max)
	}
	return err
}

// openLayer detects the compression from the first bytes and opens the
// decompressed stream, within lim.
func openLayer(blob io.Reader, lim Limits) (*layerReader, error) {
	src := &sourceReader{r: blob}
	br := bufio.NewReaderSize(src, 64<<10)
	head, _ := br.Peek(4)
	var comp Compression
	var rc io.ReadCloser
	var frames *zstdFrames
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			src.drain()
			return nil, src.cause(fmt.Errorf("%w: gzip: %v", ErrNotTar, err))
		}
		zr.Multistream(true)
		comp, rc = Gzip, zr
	case bytes.HasPrefix(head, zstdMagic):
		// The decoder is handed each frame only once its header is read, and
		// refuses a bigger window itself too: a window of a few bytes'
		// declaring is never memory held.
		window := lim.zstdWindow()
		frames = &zstdFrames{r: br, max: window}
		zr, err := zstd.NewReader(frames, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(uint64(window)), zstd.WithDecoderMaxMemory(uint64(window)))
		if err != nil {
			src.drain()
			return nil, src.cause(fmt.Errorf("%w: zstd: %v", ErrNotTar, err))
		}
		comp, rc = Zstd, zr.IOReadCloser()
	default:
		comp, rc = Uncompressed, io.NopCloser(br)
	}
	l := &layerReader{comp: comp, src: src, zstd: frames}
	var expanded io.Reader = rc
	if lim.Size > 0 {
		l.limit = &limitReader{r: rc, max: lim.Size}
		expanded = l.limit
	}
	ar := newAheadReader(expanded)
	l.tr, l.rest = tar.NewReader(ar), ar
	var once sync.Once
	l.close = func() {
		once.Do(func() {
			ar.Close()
			rc.Close()
		})
	}
	return l, nil
}

// aheadReader decompresses in its own goroutine, up to aheadChunks chunks
// ahead of the reader, so that decompressing and what the reader does with
// the bytes (compressing, when repackaging) overlap on two cores. io.Pipe
// would hand over one buffer at a time and serialize the two.
type aheadReader struct {
	chunks chan []byte
	free   chan []byte
	errc   chan error
	stop   chan struct{}
	cur    []byte // the chunk being read
	off    int
	err    error
}

const (
	aheadChunks    = 4
	aheadChunkSize = 256 << 10
)

func newAheadReader(src io.Reader) *aheadReader {
	a := &aheadReader{
		chunks: make(chan []byte, aheadChunks),
		free:   make(chan []byte, aheadChunks+1),
		errc:   make(chan error, 1),
		stop:   make(chan struct{}),
	}
	for range aheadChunks + 1 {
		a.free <- make([]byte, aheadChunkSize)
	}
	go func() {
		defer close(a.chunks)
		for {
			var buf []byte
			select {
			case buf = <-a.free:
			case <-a.stop:
				return
			}
			n, err := fill(src, buf)
			if n > 0 {
				select {
				case a.chunks <- buf[:n]:
				case <-a.stop:
					return
				}
			}
			if err != nil {
				// io.EOF is the end of the stream; anything else, the
				// source's io.ErrUnexpectedEOF (a body cut short) included,
				// is passed on unchanged.
				a.errc <- err
				return
			}
		}
	}()
	return a
}

// fill reads into buf until it is full or src fails, and returns src's own
// error: unlike io.ReadFull, it never turns a short final chunk into
// io.ErrUnexpectedEOF, so that error keeps meaning what the source meant.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (a *aheadReader) Read(p []byte) (int, error) {
	for a.off >= len(a.cur) {
		if a.cur != nil {
			a.free <- a.cur[:cap(a.cur)]
			a.cur = nil
		}
		if a.err != nil {
			return 0, a.err
		}
		chunk, ok := <-a.chunks
		if !ok {
			// The goroutine reports its error before it closes chunks; no
			// error means it was stopped.
			select {
			case a.err = <-a.errc:
			default:
				a.err = errors.New("layer reader closed")
			}
			return 0, a.err
		}
		a.cur, a.off = chunk, 0
	}
	n := copy(p, a.cur[a.off:])
	a.off += n
	return n, nil
}

// Close stops the decompressing goroutine.
func (a *aheadReader) Close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	for range a.chunks { // let the goroutine finish
	}
}

func newCompressor(w io.Writer, comp Compression) (io.WriteCloser, error) {
	switch comp {
	case Gzip:
		return gzip.NewWriterLevel(w, gzipLevel) // zero Header: no name, no time
	case Zstd:
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(1))
	case Uncompressed:
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", comp)
}

// sourceReader remembers a failure of the reader a layer comes from, so
// that a download or disk that fails is reported as that failure: it says
// nothing about the layer, whereas ErrNotTar is a verdict on its content.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// drain reads the rest of the source, unless it failed already: what it
// says at its end (a digest check) counts.
func (s *sourceReader) drain() {
	if s.err == nil {
		io.Copy(io.Discard, s) //nolint:errcheck // s records the error
	}
}

// cause returns the source's failure if there was one, else err.
func (s *sourceReader) cause(err error) error {
	if s.err != nil {
		return fmt.Errorf("read layer: %w", s.err)
	}
	return err
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// limitReader fails with ErrLayerTooLarge once more than max bytes were read.
type limitReader struct {
	r        io.Reader
	max      int64
	read     int64
	exceeded bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.read >= l.max {
		// One byte more tells a stream of exactly max from a bigger one.
		var one [1]byte
		if n, err := l.r.Read(one[:]); n == 0 {
			return 0, err
		}
		l.exceeded = true
		return 0, ErrLayerTooLarge
	}
	n, err := l.r.Read(p[:min(int64(len(p)), l.max-l.read)])
	l.read += int64(n)
	return n, err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func digestOf(h hash.Hash) digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
}

// describeRemovals renders removals for a report: "path: key, key".
func describeRemovals(rs []XattrRemoval) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		line := r.Path + ": " + strings.Join(r.Keys, ", ")
		if r.MoreKeys > 0 {
			line += fmt.Sprintf(" and %d more", r.MoreKeys)
		}
		out = append(out, line)
	}
	return out
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
