package rewrite

import (
	"errors"
	"fmt"
	"hash"
	"io"

	digest "github.com/opencontainers/go-digest"
)

// sinkWriter remembers the first failure of the writer a layer goes to.
type sinkWriter struct {
	w   io.Writer
	err error
}

func (s *sinkWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// aheadReader decompresses in its own goroutine, up to aheadChunks chunks
// ahead of the reader, so that decompressing and what the reader does with
// the bytes (compressing, when repackaging) overlap on two cores. io.Pipe
// would hand over one buffer at a time and serialize the two.
type aheadReader struct {
	chunks chan []byte
	free   chan []byte
	errc   chan error
	stop   chan struct{}
	cur    []byte // the chunk being read
	off    int
	err    error
}

const (
	aheadChunks    = 4
	aheadChunkSize = 256 << 10
)

func newAheadReader(src io.Reader) *aheadReader {
	a := &aheadReader{
		chunks: make(chan []byte, aheadChunks),
		free:   make(chan []byte, aheadChunks+1),
		errc:   make(chan error, 1),
		stop:   make(chan struct{}),
	}
	for range aheadChunks + 1 {
		a.free <- make([]byte, aheadChunkSize)
	}
	go func() {
		defer close(a.chunks)
		for {
			var buf []byte
			select {
			case buf = <-a.free:
			case <-a.stop:
				return
			}
			n, err := fill(src, buf)
			if n > 0 {
				select {
				case a.chunks <- buf[:n]:
				case <-a.stop:
					return
				}
			}
			if err != nil {
				// io.EOF is the end of the stream; anything else, the
				// source's io.ErrUnexpectedEOF (a body cut short) included,
				// is passed on unchanged.
				a.errc <- err
				return
			}
		}
	}()
	return a
}

// fill reads into buf until it is full or src fails, and returns src's own
// error: unlike io.ReadFull, it never turns a short final chunk into
// io.ErrUnexpectedEOF, so that error keeps meaning what the source meant.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (a *aheadReader) Read(p []byte) (int, error) {
	for a.off >= len(a.cur) {
		if a.cur != nil {
			a.free <- a.cur[:cap(a.cur)]
			a.cur = nil
		}
		if a.err != nil {
			return 0, a.err
		}
		chunk, ok := <-a.chunks
		if !ok {
			// The goroutine reports its error before it closes chunks; no
			// error means it was stopped.
			select {
			case a.err = <-a.errc:
			default:
				a.err = errors.New("layer reader closed")
			}
			return 0, a.err
		}
		a.cur, a.off = chunk, 0
	}
	n := copy(p, a.cur[a.off:])
	a.off += n
	return n, nil
}

// Close stops the decompressing goroutine.
func (a *aheadReader) Close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	for range a.chunks { // let the goroutine finish
	}
}

// sourceReader remembers a failure of the reader a layer comes from, so
// that a download or disk that fails is reported as that failure: it says
// nothing about the layer, whereas ErrNotTar is a verdict on its content.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// drain reads the rest of the source, unless it failed already: what it
// says at its end (a digest check) counts.
func (s *sourceReader) drain() {
	if s.err == nil {
		io.Copy(io.Discard, s) //nolint:errcheck // s records the error
	}
}

// cause returns the source's failure if there was one, else err.
func (s *sourceReader) cause(err error) error {
	if s.err != nil {
		return fmt.Errorf("read layer: %w", s.err)
	}
	return err
}

// limitReader fails with ErrLayerTooLarge once more than max bytes were read.
type limitReader struct {
	r        io.Reader
	max      int64
	read     int64
	exceeded bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.read >= l.max {
		// One byte more tells a stream of exactly max from a bigger one.
		var one [1]byte
		if n, err := l.r.Read(one[:]); n == 0 {
			return 0, err
		}
		l.exceeded = true
		return 0, ErrLayerTooLarge
	}
	n, err := l.r.Read(p[:min(int64(len(p)), l.max-l.read)])
	l.read += int64(n)
	return n, err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func digestOf(h hash.Hash) digest.Digest {
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
}

// countReader counts what is read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
