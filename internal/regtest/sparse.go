package regtest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"time"
)

// SparseData is one data region of a GNU sparse file: the rest is holes.
type SparseData struct {
	Offset int64
	Data   []byte
}

// WriteGNUSparse writes one old-format GNU sparse entry (typeflag 'S', as
// GNU tar -S --format=gnu writes a file with holes) to w, which must be at
// an entry boundary (a tar.Writer's output after Flush): a GNU header whose
// sparse map (at most four regions, offset 386) lists data, realsize (483)
// the logical size, and size the data stored, followed by the data of each
// region, padded to 512 bytes. archive/tar reads such entries but cannot
// write them, so the header is made by hand from a regular one.
func WriteGNUSparse(w io.Writer, name string, mode, realSize int64, data []SparseData) error {
	if len(data) > 4 {
		return fmt.Errorf("sparse %s: %d regions, at most 4 without extension headers", name, len(data))
	}
	var stored int64
	for _, d := range data {
		stored += int64(len(d.Data))
	}
	var hb bytes.Buffer
	tw := tar.NewWriter(&hb)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: stored, Typeflag: tar.TypeReg,
		ModTime: time.Unix(1700000000, 0), Format: tar.FormatGNU}); err != nil {
		return fmt.Errorf("sparse %s: %w", name, err)
	}
	if hb.Len() != 512 {
		return fmt.Errorf("sparse %s: the name needs more than one header block", name)
	}
	blk := hb.Bytes()[:512]
	blk[156] = tar.TypeGNUSparse
	for i, d := range data {
		octal(blk[386+i*24:386+i*24+12], d.Offset)
		octal(blk[386+i*24+12:386+i*24+24], int64(len(d.Data)))
	}
	blk[482] = 0 // no extension headers
	octal(blk[483:495], realSize)
	copy(blk[148:156], "        ")
	var sum int64
	for _, b := range blk {
		sum += int64(b)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	if _, err := w.Write(blk); err != nil {
		return err
	}
	for _, d := range data {
		if _, err := w.Write(d.Data); err != nil {
			return err
		}
	}
	_, err := w.Write(make([]byte, (512-stored%512)%512))
	return err
}

// octal writes n in field as GNU tar does: zero-padded octal digits and a
// NUL, or base-256 (the first byte's high bit set, then big-endian) for a
// number too large for the digits.
func octal(field []byte, n int64) {
	if n < 1<<(3*(len(field)-1)) {
		copy(field, fmt.Sprintf("%0*o\x00", len(field)-1, n))
		return
	}
	clear(field)
	for i := len(field) - 1; i > 0; i-- {
		field[i], n = byte(n), n>>8
	}
	field[0] = 0x80
}
