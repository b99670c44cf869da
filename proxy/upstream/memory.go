package upstream

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sync/semaphore"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// BodyMemory bounds the memory that the upstream answers regnorm reads
// whole hold while they are read: manifests, tag lists, token answers and
// error bodies (blobs are streamed, never held). An upstream decides how
// much it sends and how slowly: without a bound, one that sends 4 MiB of a
// manifest and then waits holds 4 MiB for every tag a client names. All
// upstreams share one BodyMemory; each may hold at most its share of it, so
// that one upstream that holds its share leaves the others room.
//
// A read is charged before its bytes are held (the announced length up
// front, or its buffer as it grows) and gives them back when it is done:
// the answer is then its caller's, as any manifest read from the cache is.
// A read that finds the memory spent fails at once, with a 503 and a
// Retry-After, and does not wait: it holds a client's request, and maybe
// a connection upstream.
type BodyMemory struct {
	all   *semaphore.Weighted
	share int64
}

// DefaultBodyMemory is the default bound on the upstream answers held in
// memory at once: sixteen of the largest manifest (4 MiB), or thousands of
// ordinary ones (a few KiB).
const DefaultBodyMemory = 64 << 20

// MinBodyMemory is the least BodyMemory cmd/proxy accepts: a share of it
// must hold the largest manifest.
const MinBodyMemory = 8 << 20

// NewBodyMemory is a bound of limit bytes for upstreams upstreams: each may
// hold three quarters of it (all of it, when there is one). A share smaller
// than the largest manifest (MinBodyMemory) cannot read the largest.
func NewBodyMemory(limit int64, upstreams int) *BodyMemory {
	share := limit
	if upstreams > 1 {
		share = limit / 4 * 3
	}
	return &BodyMemory{all: semaphore.NewWeighted(limit), share: share}
}

// ErrBodyMemorySpent is the cause of the error a read gets when the
// upstream answers held in memory take all the memory allowed.
var ErrBodyMemorySpent = errors.New("memory for upstream answers spent")

// memShare is one upstream's share of a BodyMemory.
type memShare struct {
	name    string
	own     *semaphore.Weighted
	of      *BodyMemory
	metrics *Metrics
}

func (m *BodyMemory) shareFor(name string, metrics *Metrics) *memShare {
	return &memShare{name: name, own: semaphore.NewWeighted(m.share), of: m, metrics: metrics}
}

// hold is the memory of one answer being read, charged to its upstream's
// share and to the whole. The zero hold of a share holds nothing.
type hold struct {
	s *memShare
	n int64
}

func (s *memShare) hold() *hold { return &hold{s: s} }

// growTo charges h up to n bytes in all, or fails at once.
func (h *hold) growTo(n int64) error {
	d := n - h.n
	if d <= 0 {
		return nil
	}
	if !h.s.own.TryAcquire(d) {
		return h.s.spent("its upstream's share")
	}
	if !h.s.of.all.TryAcquire(d) {
		h.s.own.Release(d)
		return h.s.spent("all upstreams'")
	}
	h.n = n
	h.s.metrics.bodyBytes.WithLabelValues(h.s.name).Add(float64(d))
	return nil
}

// add charges h n bytes more.
func (h *hold) add(n int64) error { return h.growTo(h.n + n) }

// release gives back everything h holds.
func (h *hold) release() {
	if h.n == 0 {
		return
	}
	h.s.own.Release(h.n)
	h.s.of.all.Release(h.n)
	h.s.metrics.bodyBytes.WithLabelValues(h.s.name).Sub(float64(h.n))
	h.n = 0
}

func (s *memShare) spent(whose string) error {
	s.metrics.bodiesRefused.WithLabelValues(s.name).Inc()
	return errcode.Busy("regnorm holds as many upstream answers in memory as maxUpstreamBodyMemory allows; retry shortly",
		fmt.Errorf("%w: %s", ErrBodyMemorySpent, whose))
}

// errTooLong is the cause of an answer longer than its cap.
var errTooLong = errors.New("answer longer than its cap")

// readWhole reads an answer into memory: at most limit bytes (errTooLong
// past it), with announced its Content-Length (-1: none). Every byte of
// buffer is charged to h before it is allocated: the announced length
// once, or a buffer that doubles as the answer comes.
func readWhole(r io.Reader, announced, limit int64, h *hold) ([]byte, error) {
	if announced > limit {
		return nil, errTooLong
	}
	if announced >= 0 {
		if err := h.growTo(announced); err != nil {
			return nil, err
		}
		buf := make([]byte, announced)
		// net/http ends a body at its Content-Length: a shorter one is an
		// error here, a longer one is not read.
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	var buf []byte
	for size := min(limit+1, 16<<10); ; size = min(2*size, limit+1) {
		if err := h.growTo(size); err != nil {
			return nil, err
		}
		buf = append(make([]byte, 0, size), buf...)
		for len(buf) < cap(buf) {
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				return buf, nil
			}
			if err != nil {
				return nil, err
			}
		}
		if int64(len(buf)) > limit {
			return nil, errTooLong
		}
	}
}

// chargedReader charges h for what a streaming decoder may hold of r, and
// ends r at limit bytes (errTooLong past it). Before each Read it charges
// what has been read and the buffer offered: a decoder's buffer (what it
// has read and not consumed, and room for the read) and what it made of
// the consumed part (tags, no longer than their text) together hold no
// more than that.
type chargedReader struct {
	r     io.Reader
	h     *hold
	limit int64
	read  int64
	peak  int64 // the most charged for reading: read + len(p)
}

func (c *chargedReader) Read(p []byte) (int, error) {
	if c.read > c.limit {
		return 0, errTooLong
	}
	if room := c.limit + 1 - c.read; int64(len(p)) > room {
		p = p[:room] // one byte more than allowed tells an answer that is too long
	}
	if want := c.read + int64(len(p)); want > c.peak {
		if err := c.h.add(want - c.peak); err != nil {
			return 0, err
		}
		c.peak = want
	}
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read > c.limit {
		return n, errTooLong
	}
	return n, err
}
