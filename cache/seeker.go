package cache

import (
	"context"
	"errors"
	"fmt"
	"io"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// driverSeeker makes a driver's forward-only reader seekable by reopening it
// at the new offset on the first Read after a Seek. Drivers whose reader
// already seeks (filesystem) never get here.
type driverSeeker struct {
	ctx    context.Context
	driver storagedriver.StorageDriver
	path   string
	size   int64
	offset int64
	rc     io.ReadCloser // positioned at offset, or nil
}

func (s *driverSeeker) Read(p []byte) (int, error) {
	if s.offset >= s.size {
		return 0, io.EOF
	}
	if s.rc == nil {
		rc, err := s.driver.Reader(s.ctx, s.path, s.offset)
		if err != nil {
			return 0, fmt.Errorf("reopen %s at %d: %w", s.path, s.offset, err)
		}
		s.rc = rc
	}
	n, err := s.rc.Read(p)
	s.offset += int64(n)
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
	if abs != s.offset && s.rc != nil {
		s.rc.Close()
		s.rc = nil
	}
	s.offset = abs
	return abs, nil
}

func (s *driverSeeker) Close() error {
	if s.rc == nil {
		return nil
	}
	return s.rc.Close()
}
