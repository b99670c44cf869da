package rewrite

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// rleFrame is a zstd frame declaring a window of 1<<windowLog bytes whose
// content is blocks run-length blocks of 128 KiB of zeros: a tar stream with
// no entries, and a few bytes a block. Decoders that trust the header keep
// a window of that size while they decode it.
func rleFrame(windowLog, blocks int) []byte {
	out := binary.LittleEndian.AppendUint32(nil, zstdFrameMagic)
	out = append(out, 0x00, byte(windowLog-10)<<3) // no content size, not single segment; Window_Descriptor
	for i := range blocks {
		h := uint32(1)<<1 | uint32(128<<10)<<3 // RLE, 128 KiB
		if i == blocks-1 {
			h |= 1 // last
		}
		out = append(out, byte(h), byte(h>>8), byte(h>>16), 0x00)
	}
	return out
}

// singleSegmentFrame is a zstd frame whose header says its content is n
// bytes and that it is one segment: its window is n.
func singleSegmentFrame(n uint32) []byte {
	out := binary.LittleEndian.AppendUint32(nil, zstdFrameMagic)
	out = append(out, 2<<6|1<<5) // 4-byte content size, single segment
	out = binary.LittleEndian.AppendUint32(out, n)
	h := uint32(1) | uint32(1)<<1 | uint32(1024)<<3 // last, RLE, 1 KiB
	return append(out, byte(h), byte(h>>8), byte(h>>16), 0x00)
}

func skippableFrame(data []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, zstdSkippableMagic|0x7)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(data)))
	return append(out, data...)
}

// encode compresses raw with klauspost/compress as containerd, buildkit and
// regnorm do, at level, streamed or in one call (a single segment frame).
func encode(t *testing.T, raw []byte, level zstd.EncoderLevel, all bool) []byte {
	t.Helper()
	if all {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderCRC(true))
		if err != nil {
			t.Fatal(err)
		}
		return enc.EncodeAll(raw, nil)
	}
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(level))
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(raw)
	zw.Close()
	return buf.Bytes()
}

// TestZstdWindowIsBounded: a zstd layer whose frames declare a window over
// the limit is ErrZstdWindow, whichever frame declares it and however it
// declares it, when scanned, repackaged, recompressed or read for its diff
// ID; what ordinary encoders write is read.
func TestZstdWindowIsBounded(t *testing.T) {
	t.Parallel()
	small := rleFrame(20, 1) // 1 MiB window, one block
	tests := []struct {
		name    string
		blob    []byte
		lim     Limits
		wantErr error
	}{
		{"128 MiB window", rleFrame(27, 1024), Limits{}, ErrZstdWindow},
		{"1 GiB window", rleFrame(30, 1), Limits{}, ErrZstdWindow},
		{"16 MiB window, 8 MiB allowed", rleFrame(24, 1), Limits{}, ErrZstdWindow},
		{"16 MiB window, 16 MiB allowed", rleFrame(24, 1), Limits{ZstdWindow: 16 << 20}, nil},
		{"8 MiB window", rleFrame(23, 1), Limits{}, nil},
		{"a small frame, then a big one", append(bytes.Clone(small), rleFrame(27, 1)...), Limits{}, ErrZstdWindow},
		{"a small frame, a skippable one, a big one", bytes.Join([][]byte{small, skippableFrame(bytes.Repeat([]byte{0x28}, 100)), rleFrame(27, 1)}, nil), Limits{}, ErrZstdWindow},
		{"a small frame, a skippable one", append(bytes.Clone(small), skippableFrame([]byte("x"))...), Limits{}, nil},
		{"single segment of 64 MiB", singleSegmentFrame(64 << 20), Limits{}, ErrZstdWindow},
		{"1 MiB window, 1 KiB allowed", small, Limits{ZstdWindow: 1 << 10}, ErrZstdWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			check := func(what string, err error) {
				t.Helper()
				if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("%s: %v, want %v", what, err, tt.wantErr)
				}
			}
			scan, err := ScanLayer(bytes.NewReader(tt.blob), tt.lim)
			check("scan", err)
			if err == nil && (scan.Compression != Zstd || scan.Entries != 0) {
				t.Errorf("scan: %+v", scan)
			}
			_, err = RepackLayer(io.Discard, bytes.NewReader(tt.blob), tt.lim)
			check("repack", err)
			_, err = TransformLayer(io.Discard, bytes.NewReader(tt.blob), tt.lim, LayerTransform{To: Gzip})
			check("recompress", err)
			_, _, err = LayerDiffID(iotest.OneByteReader(bytes.NewReader(tt.blob)), tt.lim)
			check("diff ID, a byte at a time", err)
		})
	}
}

// TestOrdinaryZstdLayersAreRead: what klauspost/compress writes at every
// level, streamed or in one call, with or without checksums, in several
// frames, is read under the default window, and read the same as without
// the frame watch.
func TestOrdinaryZstdLayersAreRead(t *testing.T) {
	t.Parallel()
	var entries []entry
	for i := range 40 {
		entries = append(entries, reg("f"+string(rune('a'+i%26))+string(rune('a'+i/26)), string(bytes.Repeat([]byte{byte(i)}, 300<<10)), nil))
	}
	entries = append(entries, special(tar.TypeSymlink, "link", "fa", map[string]string{userX: "v"}))
	raw := buildTar(t, entries, tar.FormatPAX)
	half := len(raw) / 2
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression, zstd.SpeedBestCompression} {
		for _, all := range []bool{false, true} {
			multi := append(encode(t, raw[:half], level, all), skippableFrame([]byte("meta"))...)
			multi = append(multi, encode(t, raw[half:], level, !all)...)
			for name, blob := range map[string][]byte{"one frame": encode(t, raw, level, all), "frames": multi} {
				scan, err := ScanLayer(bytes.NewReader(blob), Limits{})
				if err != nil || scan.Entries != len(entries) || scan.Stripped != 1 {
					t.Errorf("%s, %s, all at once %v: %+v, %v", level, name, all, scan, err)
				}
				if id, _, err := LayerDiffID(iotest.HalfReader(bytes.NewReader(blob)), Limits{}); err != nil || id != digest.FromBytes(raw) {
					t.Errorf("%s, %s, all at once %v: diff ID %s, %v", level, name, all, id, err)
				}
			}
		}
	}
}
