package regtest

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// ZstdWindowBomb returns a zstd frame whose header declares a window of
// 1<<windowLog bytes and whose run-length blocks decode to size zero bytes
// (a valid, empty tar stream followed by padding): a few bytes per 128 KiB,
// so a few KB can make a decoder that trusts the header hold the whole window.
func ZstdWindowBomb(windowLog uint, size int64) []byte {
	if windowLog < 10 || windowLog > 41 {
		panic(fmt.Sprintf("zstd window log %d out of range", windowLog))
	}
	const maxBlock = 128 << 10
	var b bytes.Buffer
	b.Write([]byte{0x28, 0xb5, 0x2f, 0xfd}) // magic
	b.WriteByte(0x00)                       // no content size, not single segment, no checksum, no dictionary
	b.WriteByte(byte(windowLog-10) << 3)    // window descriptor: exponent, mantissa 0
	for left := size; left > 0; {
		n := min(left, maxBlock)
		left -= n
		last := uint32(0)
		if left == 0 {
			last = 1
		}
		hdr := uint32(n)<<3 | 1<<1 | last // an RLE block of n bytes
		var h [4]byte
		binary.LittleEndian.PutUint32(h[:], hdr)
		b.Write(h[:3])
		b.WriteByte(0) // the repeated byte
	}
	return b.Bytes()
}

// ZstdRawFrame returns a zstd frame whose header declares a window of
// 1<<windowLog bytes and whose raw (stored) blocks hold content: a decoder
// that accepts the window gets content back, whatever the window.
func ZstdRawFrame(windowLog uint, content []byte) []byte {
	if windowLog < 17 || windowLog > 41 {
		panic(fmt.Sprintf("zstd window log %d out of range for 128 KiB blocks", windowLog))
	}
	const maxBlock = 128 << 10
	var b bytes.Buffer
	b.Write([]byte{0x28, 0xb5, 0x2f, 0xfd}) // magic
	b.WriteByte(0x00)                       // no content size, not single segment, no checksum, no dictionary
	b.WriteByte(byte(windowLog-10) << 3)    // window descriptor: exponent, mantissa 0
	for left := content; ; {
		n := min(len(left), maxBlock)
		last := uint32(0)
		if n == len(left) {
			last = 1
		}
		hdr := uint32(n)<<3 | last // a raw block of n bytes
		var h [4]byte
		binary.LittleEndian.PutUint32(h[:], hdr)
		b.Write(h[:3])
		b.Write(left[:n])
		left = left[n:]
		if last == 1 {
			return b.Bytes()
		}
	}
}

// LongSymlinks returns n symlinks whose names are pathLen bytes long, each
// with a user.* xattr: the symlink xattr rule removes the xattrs
// and records each entry's path.
func LongSymlinks(n, pathLen int) []File {
	files := make([]File, n)
	for i := range files {
		name := fmt.Sprintf("d%04d/", i) + strings.Repeat("p", pathLen-6)
		files[i] = File{
			Name: name, Typeflag: tar.TypeSymlink, Linkname: "target", Mode: 0o777,
			PAXRecords: map[string]string{"SCHILY.xattr.user.origin": "hostile"},
		}
	}
	return files
}
