package cache

import (
	"context"
	"errors"
	"fmt"
	"io"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// driverSeeker makes a driver's forward-only reader (S3's GET) seekable. It
// starts with the reader OpenBlob opened at the offset it was asked for, and
// opens another only when a Read wants a position the current one is not at:
// net/http's Seek to the end (for the size) and back costs nothing, so a
// blob, or a range of it, is served with one GET.
type driverSeeker struct {
	ctx     context.Context
	driver  storagedriver.StorageDriver
	path    string
	size    int64
	offset  int64         // where the next Read reads
	pos     int64         // where rc is; meaningless when rc is nil
	rc      io.ReadCloser // or nil
	release func()
}

func (s *driverSeeker) Read(p []byte) (int, error) {
	if s.offset >= s.size {
		return 0, io.EOF
	}
	if s.rc != nil && s.pos != s.offset {
		s.rc.Close()
		s.rc = nil
	}
	if s.rc == nil {
		rc, err := s.driver.Reader(s.ctx, s.path, s.offset)
		if err != nil {
			return 0, fmt.Errorf("reopen %s at %d: %w", s.path, s.offset, err)
		}
		s.rc, s.pos = rc, s.offset
	}
	n, err := s.rc.Read(p)
	s.offset += int64(n)
	s.pos += int64(n)
	return n, err
}

func (s *driverSeeker) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = s.offset + offset
	case io.SeekEnd:
		abs = s.size + offset
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("seek: negative position")
	}
	s.offset = abs
	return abs, nil
}

func (s *driverSeeker) Close() error {
	defer s.release()
	if s.rc == nil {
		return nil
	}
	return s.rc.Close()
}
