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
// sends; this bounds what regnorm writes to the cache in its name. Both
// bounds are the same for every upstream: a layer's verdict (and an image's)
// is shared by digest, so which upstream's client asked first must not
// decide whether another upstream's clients get a layer fixed.
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
	// holeRatio and holeSlack bound the holes of GNU sparse entries a
	// repackaging fills (rewrite.Limits.Holes) to holeRatio times its
	// source's size, plus holeSlack: the work of writing and compressing
	// zeros that a few bytes of tar can ask for (one entry of 113 bytes of
	// gzip may declare 16 GiB). A zstd source already asks for that much
	// work at about this ratio (1 GiB of zeros from 34 KB); a real sparse
	// file (a 1 GB lastlog in a layer of a few MB) stays within it.
	holeRatio = 1 << 15
	holeSlack = 64 << 20
)

var (
	// errAmplifies: the layer made would be more than madeRatio times its
	// source, and madeSlack.
	errAmplifies = fmt.Errorf("the layer made would be more than %d times its source's size, and %d bytes", madeRatio, madeSlack)
	// errMadeTooLarge: the layer made would be larger than any blob an
	// upstream may send (Options.MaxMadeSize).
	errMadeTooLarge = errors.New("the layer made would be larger than maxBlobSize")
)

// holesBound is how many bytes of holes a repackaging of a source of
// srcSize bytes may fill.
func holesBound(srcSize int64) int64 { return holeRatio*max(srcSize, 0) + holeSlack }

// madeBound is how large a layer made from a source of srcSize bytes may
// be, within maxMade (0: no bound but the ratio), and the error past it:
// whichever bound is the smaller.
func madeBound(srcSize, maxMade int64) (int64, error) {
	limit := madeRatio*max(srcSize, 0) + madeSlack
	if maxMade > 0 && maxMade < limit {
		return maxMade, errMadeTooLarge
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

// boundMade is w bounded for a layer made from a source of srcSize bytes,
// within maxMade.
func boundMade(w io.Writer, srcSize, maxMade int64) *boundedWriter {
	limit, over := madeBound(srcSize, maxMade)
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
