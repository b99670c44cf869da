package rewrite

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"
	"strings"
)

// RepackLayer writes blob to dst without the xattrs that the kernel refuses
// on symlinks, devices and FIFOs, keeping the compression. Names, modes,
// owners, times, link targets, contents, the xattrs of regular files and
// directories, whiteouts and the order of entries are kept. The digests of
// the output are computed in the same pass that writes it.
//
// Every entry goes through archive/tar's writer, which cannot reproduce
// every header byte for byte: PAX records are written in sorted order,
// sparse files (GNU's typeflag 'S', or PAX's GNU.sparse.* records) are
// written expanded, as regular files, and numeric fields use its own
// encoding. What an extraction produces is unchanged.
//
// A layer beyond lim is ErrLayerTooLarge, ErrZstdWindow or
// ErrHolesBeyondLimit; lim.Size bounds the tar written too, sparse files
// expanded (unless lim.Unwritten). Like ScanLayer, it reads blob to its end
// and returns blob's errors.
func RepackLayer(dst io.Writer, blob io.Reader, lim Limits) (LayerResult, error) {
	return TransformLayer(dst, blob, lim, LayerTransform{Strip: true})
}

// LayerTransform is what is done to a layer: the symlink xattr rule's
// repackaging (Strip), the sparse rule's (Expand), a new compression (To;
// empty keeps the layer's), or some of them together. With Strip or
// Expand, every entry is written anew by archive/tar's writer, which
// writes GNU sparse entries expanded whichever of the two asked; Expand
// alone keeps every xattr. With neither, the tar stream is copied byte for
// byte, so its diff ID stays.
type LayerTransform struct {
	Strip  bool
	Expand bool
	To     Compression
}

// Rewrites reports whether t writes the tar anew (rather than recompress
// it byte for byte).
func (t LayerTransform) Rewrites() bool { return t.Strip || t.Expand }

// Key names t in records: "" for the symlink rule's repackaging alone (the
// key it had before there were others), else its parts in a fixed order,
// comma-separated: "strip", "expand", then the compression.
func (t LayerTransform) Key() string {
	if t.Strip && !t.Expand && t.To == "" {
		return ""
	}
	var parts []string
	if t.Strip {
		parts = append(parts, "strip")
	}
	if t.Expand {
		parts = append(parts, "expand")
	}
	if t.To != "" {
		parts = append(parts, string(t.To))
	}
	return strings.Join(parts, ",")
}

// ParseLayerTransform reads a Key.
func ParseLayerTransform(key string) (LayerTransform, error) {
	if key == "" {
		return LayerTransform{Strip: true}, nil
	}
	var t LayerTransform
	parts := strings.Split(key, ",")
	if p := parts[0]; p == "strip" {
		t.Strip, parts = true, parts[1:]
	}
	if len(parts) > 0 && parts[0] == "expand" {
		t.Expand, parts = true, parts[1:]
	}
	switch {
	case len(parts) == 1 && slices.Contains([]Compression{Gzip, Zstd, Uncompressed}, Compression(parts[0])):
		t.To = Compression(parts[0])
	case len(parts) > 0:
		return LayerTransform{}, fmt.Errorf("unknown layer transform %q", key)
	}
	if t.Key() != key {
		return LayerTransform{}, fmt.Errorf("unknown layer transform %q", key)
	}
	return t, nil
}

// TransformLayer writes blob to dst as t says, hashing the output in the
// same pass. With Strip it is RepackLayer, writing t.To when set; with
// Expand, GNU sparse entries become regular files, xattrs stay unless
// Strip. With neither, the decompressed stream is recompressed to t.To
// byte for byte: the tar and its diff ID are the layer's own.
// Deterministic, like RepackLayer. The result lists what was stripped
// (with Strip) and expanded.
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
	if !t.Rewrites() {
		res, err := recompress(out, l, comp, notTar)
		res.Transform = t
		return res, err
	}

	compressedHash, compressedSize := sha256.New(), &countWriter{}
	zw, err := newCompressor(io.MultiWriter(out, compressedHash, compressedSize), comp)
	if err != nil {
		return LayerResult{}, err
	}
	diffIDHash := sha256.New()
	// The tar written is bounded like the one read: a sparse entry of a few
	// bytes may declare a terabyte.
	writeMax := lim.Size
	if lim.Unwritten {
		writeMax = 0 // the read is still bounded, by lim.Size
	}
	written := &tarBound{w: io.MultiWriter(zw, diffIDHash), max: writeMax, holes: lim.Holes, read: func() int64 { return l.consumed.n }}
	tw := tar.NewWriter(written)
	tooLarge := func() error {
		l.fail(ErrLayerTooLarge) //nolint:errcheck // what the source says counts, below
		if l.src.err != nil {
			return l.src.cause(nil)
		}
		return fmt.Errorf("%w: more than %d bytes written", ErrLayerTooLarge, lim.Size)
	}
	// beyond is the error of a write the bounds refused, or nil.
	beyond := func() error {
		switch {
		case written.exceeded:
			return tooLarge()
		case written.holesExceeded:
			l.fail(ErrHolesBeyondLimit) //nolint:errcheck // what the source says counts, below
			if l.src.err != nil {
				return l.src.cause(nil)
			}
			return fmt.Errorf("%w: more than %d bytes of holes filled", ErrHolesBeyondLimit, lim.Holes)
		}
		return nil
	}

	res := LayerResult{LayerScan: LayerScan{Compression: comp}, Transform: t}
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
		if keys := strippableXattrs(hdr); t.Strip && len(keys) > 0 {
			res.record(hdr.Name, keys)
			for _, k := range keys {
				delete(hdr.PAXRecords, k)
			}
		}
		if isGNUSparse(hdr) {
			// archive/tar cannot write a sparse entry: whichever rule
			// asked for the rewrite, it is written expanded.
			res.recordSparse(hdr.Name)
			expand(hdr)
		}
		if writeMax > 0 && hdr.Size > writeMax-written.n {
			return LayerResult{}, tooLarge() // known before a byte of it is written
		}
		hdr.Xattrs = nil //nolint:staticcheck // PAXRecords holds the same records; both would be written
		if err := tw.WriteHeader(hdr); err != nil {
			if err := beyond(); err != nil {
				return LayerResult{}, err
			}
			return LayerResult{}, notTar(fmt.Errorf("rewrite %s: %v", hdr.Name, err))
		}
		if _, err := io.CopyBuffer(tw, tr, buf); err != nil {
			if err := beyond(); err != nil {
				return LayerResult{}, err
			}
			return LayerResult{}, notTar(fmt.Errorf("copy %s: %v", hdr.Name, err))
		}
	}
	if err := tw.Close(); err != nil {
		if err := beyond(); err != nil {
			return LayerResult{}, err
		}
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

// tarBound counts the tar a repackaging writes and refuses to write past
// max bytes (0: no bound) with ErrLayerTooLarge, or more than holes bytes
// (0: no bound) beyond what read says was read, with ErrHolesBeyondLimit.
type tarBound struct {
	w                       io.Writer
	max, n                  int64
	holes                   int64
	read                    func() int64
	exceeded, holesExceeded bool
}

func (b *tarBound) Write(p []byte) (int, error) {
	if b.max > 0 && int64(len(p)) > b.max-b.n {
		b.exceeded = true
		return 0, ErrLayerTooLarge
	}
	if b.holes > 0 && b.n+int64(len(p))-b.read() > b.holes {
		b.holesExceeded = true
		return 0, ErrHolesBeyondLimit
	}
	n, err := b.w.Write(p)
	b.n += int64(n)
	return n, err
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
