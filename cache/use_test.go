package cache

import (
	"context"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
)

// TestClaimAndOpenExcludeEachOther: once an eviction has claimed a blob,
// nothing can start reading it; while a reader has it open, no eviction can
// claim it. (Before, a Pin could land between the claim and the delete.)
func TestClaimAndOpenExcludeEachOther(t *testing.T) {
	t.Parallel()
	u := newUsage(time.Now)
	d := digest.FromString("x")
	if !u.claim(d) {
		t.Fatal("claim of an unused blob refused")
	}
	if _, ok := u.acquire(d); ok {
		t.Fatal("a claimed blob was opened")
	}
	u.unclaim(d)
	release, ok := u.acquire(d)
	if !ok {
		t.Fatal("open after unclaim refused")
	}
	if u.claim(d) {
		t.Fatal("an open blob was claimed")
	}
	release()
	release() // a second release is harmless
	if !u.claim(d) {
		t.Fatal("claim after the reader closed refused")
	}
}

// TestMissesLeaveNoTrace: asking for blobs that are not there (a client
// sending random digests) grows no state.
func TestMissesLeaveNoTrace(t *testing.T) {
	t.Parallel()
	s := New(inmemory.New())
	ctx := context.Background()
	for i := range 10000 {
		if _, _, err := s.OpenBlob(ctx, digest.FromString(string(rune(i))+"missing"), 0); err == nil {
			t.Fatal("opened a missing blob")
		}
	}
	s.use.mu.Lock()
	pins, claimed := len(s.use.pins), len(s.use.claimed)
	s.use.mu.Unlock()
	if pins != 0 || claimed != 0 || s.use.lastUse.Len() != 0 || s.use.recorded.Len() != 0 || s.sizes.Len() != 0 {
		t.Fatalf("after 10000 misses: %d pins, %d claims, %d uses, %d recorded, %d sizes",
			pins, claimed, s.use.lastUse.Len(), s.use.recorded.Len(), s.sizes.Len())
	}
}
