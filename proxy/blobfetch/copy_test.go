package blobfetch

import (
	"bytes"
	"os"
	"testing"
)

// A body longer than the upstream announced stops at the announced size:
// the spool, reserved for that much, never grows past it.
func TestCopyBodyStopsAtTheAnnouncedSize(t *testing.T) {
	t.Parallel()
	spool, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	defer spool.Close()
	f := &Download{size: 1 << 20, changed: make(chan struct{})}
	n, err := copyBody(f, bytes.NewReader(make([]byte, 3<<20)), spool, nil)
	fi, _ := spool.Stat()
	if err == nil || n > f.size || fi.Size() > f.size {
		t.Fatalf("copied %d, spool %d bytes, error %v; want an error and at most %d", n, fi.Size(), err, f.size)
	}
}
