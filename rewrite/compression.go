package rewrite

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

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

// DetectCompression reads a layer blob's first bytes and says how it is
// compressed: gzip or zstd by their magic numbers, anything else
// Uncompressed (as containerd's own sniffing does). It reads at most four
// bytes; a blob shorter than that is Uncompressed. It does not verify
// anything: the caller reads the rest and checks the digest before the
// answer counts.
func DetectCompression(blob io.Reader) (Compression, error) {
	head := make([]byte, len(zstdMagic))
	n, err := io.ReadFull(blob, head)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return "", err
	}
	return compressionOf(head[:n]), nil
}

func compressionOf(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return Gzip
	case bytes.HasPrefix(head, zstdMagic):
		return Zstd
	}
	return Uncompressed
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

// layerReader is an opened layer: a tar reader over the decompressed
// stream, which runs ahead in its own goroutine (aheadReader).
type layerReader struct {
	tr    *tar.Reader
	rest  io.Reader // the decompressed stream the tar reader reads
	comp  Compression
	src   *sourceReader
	limit *limitReader // nil: no limit
	// consumed counts what the tar reader read of the decompressed
	// stream: on the reader's goroutine, so the same layer gives the same
	// count at the same point, whatever the read-ahead did.
	consumed *countReader
	zstd     *zstdFrames // nil: not zstd
	close    func()
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
	switch compressionOf(head) {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			src.drain()
			return nil, src.cause(fmt.Errorf("%w: gzip: %v", ErrNotTar, err))
		}
		zr.Multistream(true)
		comp, rc = Gzip, zr
	case Zstd:
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
	l.consumed = &countReader{r: ar}
	l.tr, l.rest = tar.NewReader(l.consumed), ar
	var once sync.Once
	l.close = func() {
		once.Do(func() {
			ar.Close()
			rc.Close()
		})
	}
	return l, nil
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

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
