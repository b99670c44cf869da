package rewrite

import (
	"encoding/binary"
	"io"
)

// zstdFrames passes a zstd stream through, reading the frames' headers as
// they go by (RFC 8878, section 3.1), and fails with ErrZstdWindow, before
// the decoder sees it, at a frame that declares a window larger than max:
// the memory a decoder holds is the window a few bytes of header ask for,
// so it is refused on the header, not found out by allocating. Bytes that
// are not zstd framing stop the watch: the decoder says what is wrong.
type zstdFrames struct {
	r   io.Reader
	max int64
	// declared is the window of the frame refused; 0 until then.
	declared int64

	state    frameState
	buf      [14]byte // a field being collected
	have     int
	need     int
	skip     int64 // bytes to pass over: a block, a skippable frame, a checksum
	checksum bool  // the current frame ends with a checksum
}

type frameState int

const (
	stMagic      frameState = iota // the 4 bytes that start a frame
	stDescriptor                   // Frame_Header_Descriptor
	stHeader                       // the rest of the frame header
	stBlock                        // a 3-byte block header
	stSkippable                    // a skippable frame's 4-byte size
	stOff                          // not zstd framing: pass through unwatched
)

const (
	zstdFrameMagic     uint32 = 0xFD2FB528
	zstdSkippableMagic uint32 = 0x184D2A50 // to 0x184D2A5F
)

func (f *zstdFrames) Read(p []byte) (int, error) {
	if f.declared > 0 {
		return 0, ErrZstdWindow
	}
	n, err := f.r.Read(p)
	f.watch(p[:n])
	if f.declared > 0 {
		return 0, ErrZstdWindow
	}
	return n, err
}

// watch follows the framing through p.
func (f *zstdFrames) watch(p []byte) {
	for len(p) > 0 && f.state != stOff && f.declared == 0 {
		if f.skip > 0 {
			n := min(int64(len(p)), f.skip)
			f.skip -= n
			p = p[n:]
			continue
		}
		if f.need == 0 {
			f.expect(f.state)
		}
		n := copy(f.buf[f.have:f.need], p)
		f.have += n
		p = p[n:]
		if f.have == f.need {
			b := f.buf[:f.need]
			f.have, f.need = 0, 0 // unless field collects more
			f.field(b)
		}
	}
}

// expect sets how many bytes the field of state s takes.
func (f *zstdFrames) expect(s frameState) {
	f.state = s
	switch s {
	case stMagic, stSkippable:
		f.need = 4
	case stDescriptor:
		f.need = 1
	case stBlock:
		f.need = 3
	}
}

// field reads a complete field of the current state.
func (f *zstdFrames) field(b []byte) {
	switch f.state {
	case stMagic:
		switch m := binary.LittleEndian.Uint32(b); {
		case m == zstdFrameMagic:
			f.state = stDescriptor
		case m&0xFFFFFFF0 == zstdSkippableMagic:
			f.state = stSkippable
		default:
			f.state = stOff
		}
	case stSkippable:
		f.skip = int64(binary.LittleEndian.Uint32(b))
		f.state = stMagic
	case stDescriptor:
		d := b[0]
		single := d&(1<<5) != 0
		f.checksum = d&(1<<2) != 0
		rest := []int{0, 1, 2, 4}[d&3] + []int{0, 2, 4, 8}[d>>6] // dictionary ID, content size
		if d>>6 == 0 && single {
			rest++ // a one-byte content size
		}
		if !single {
			rest++ // Window_Descriptor
		}
		// The descriptor stays in buf[0], the rest of the header follows.
		f.state, f.have, f.need = stHeader, 1, 1+rest
	case stHeader:
		if w := frameWindow(b); w > f.max {
			f.declared = w
			return
		}
		f.state = stBlock
	case stBlock:
		h := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
		last, typ, size := h&1 != 0, (h>>1)&3, int64(h>>3)
		switch typ {
		case 0, 2: // raw, compressed
			f.skip = size
		case 1: // RLE: one byte, repeated
			f.skip = 1
		default: // reserved: the decoder refuses it
			f.state = stOff
			return
		}
		if last {
			f.state = stMagic
			if f.checksum {
				f.skip += 4
			}
		}
	}
}

// frameWindow is the window a frame header (descriptor first) declares.
func frameWindow(h []byte) int64 {
	d := h[0]
	if d&(1<<5) == 0 { // Window_Descriptor follows the descriptor
		exp, mantissa := int64(h[1]>>3), int64(h[1]&7)
		base := int64(1) << (10 + exp)
		return base + base/8*mantissa
	}
	// Single segment: the window is the content size, which ends the header.
	fcs := h[len(h)-[]int{1, 2, 4, 8}[d>>6]:]
	switch len(fcs) {
	case 1:
		return int64(fcs[0])
	case 2:
		return int64(binary.LittleEndian.Uint16(fcs)) + 256
	case 4:
		return int64(binary.LittleEndian.Uint32(fcs))
	}
	v := binary.LittleEndian.Uint64(fcs)
	if v > 1<<62 {
		return 1 << 62
	}
	return int64(v)
}
