package normalize

import (
	"errors"
	"fmt"
	"io"
)

// A layer regnorm makes (repackaged, recompressed, rebuilt) is bounded by
// what it is made from. Compression can turn a small upstream blob into a
// very large one: zstd's matches reach back as far as its window (8 MiB
// here), gzip's 32 KiB, so a zstd layer that repeats a 1 MiB block gzips to
// about a thousand times its size. maxBlobSize bounds what an upstream
// sends; this bounds what regnorm writes to the cache in its name.
const (
	// madeRatio and madeSlack bound a made layer to madeRatio times its
	// source's size, plus madeSlack. Real layers gzip to 1.1× their zstd
	// form at containerd's zstd level (rewrite's realistic layer
	// generator: 1.08; Go's source tree: 1.11), 1.44× at zstd -19 (Go's
	// source tree). The extreme of real content, a file of zeros, gzips to
	// 9.3× its zstd form at containerd's level and 31× with the zstd CLI's
	// run-length blocks: the slack keeps a layer of 1 GiB of zeros either
	// way (1.04 MB of gzip, from 34 KB of zstd).
	madeRatio = 8
	madeSlack = 1 << 20
)

var (
	// errAmplifies: the layer made would be more than madeRatio times its
	// source, and madeSlack.
	errAmplifies = fmt.Errorf("the layer made would be more than %d times its source's size, and %d bytes", madeRatio, madeSlack)
	// errMadeTooLarge: the layer made would be larger than its upstream's
	// maxBlobSize.
	errMadeTooLarge = errors.New("the layer made would be larger than the upstream's maxBlobSize")
)

// madeBound is how large a layer made from a source of srcSize bytes, of
// an upstream whose maxBlobSize is maxBlob (0: none), may be, and the error
// past it: whichever bound is the smaller.
func madeBound(srcSize, maxBlob int64) (int64, error) {
	limit := madeRatio*max(srcSize, 0) + madeSlack
	if maxBlob > 0 && maxBlob < limit {
		return maxBlob, errMadeTooLarge
	}
	return limit, errAmplifies
}

// boundedWriter refuses the write that would take what it wrote past max,
// and every write after it: a layer stops being made as it crosses its
// bound, not once it is written whole.
type boundedWriter struct {
	w    io.Writer
	max  int64
	over error // the error past max
	n    int64
	err  error // set once the bound was crossed
}

// boundMade is w bounded for a layer made from a source of srcSize bytes
// of an upstream whose maxBlobSize is maxBlob.
func boundMade(w io.Writer, srcSize, maxBlob int64) *boundedWriter {
	limit, over := madeBound(srcSize, maxBlob)
	return &boundedWriter{w: w, max: limit, over: over}
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if int64(len(p)) > b.max-b.n {
		b.err = fmt.Errorf("%w: past %d bytes", b.over, b.max)
		return 0, b.err
	}
	n, err := b.w.Write(p)
	b.n += int64(n)
	return n, err
}

// crossed is the error of a write past the bound, or nil.
func (b *boundedWriter) crossed() error { return b.err }
