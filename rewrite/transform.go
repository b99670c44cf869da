package rewrite

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
)

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
