package cache_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
)

// TestOnePinTooLargeForTheBoundDoesNotUnpinTheRest: keptPins walks the
// pins from the latest on and, at the first blob that does not fit in
// MaxPinnedBytes, gives up that pin and every one before it. A Pod author
// who has one variant pinned whose layer alone is larger than the bound
// (cache.maxPinnedSize, half of maxSize by default: a large ML layer, or
// one pushed to a public registry for the purpose) has, with one
// admission, every older pin given up: the variants running Pods name are
// then evicted as any unpinned blob, while the pins keep nothing at all,
// far under the bound. A pin that can never fit must not take the others
// with it: here the bound is 2500 bytes, two variants' blobs of 1000
// pinned earlier fit in it, and a 3000-byte blob is pinned last.
func TestOnePinTooLargeForTheBoundDoesNotUnpinTheRest(t *testing.T) {
	ctx := context.Background()
	d := inmemory.New()
	s := cache.New(d)
	put := func(b []byte) digest.Digest {
		t.Helper()
		dgst := digest.FromBytes(b)
		ingest(t, s, dgst, -1, b)
		return dgst
	}
	victims := []digest.Digest{put(bytes.Repeat([]byte{'a'}, 1000)), put(bytes.Repeat([]byte{'b'}, 1000))}
	huge := put(bytes.Repeat([]byte{'h'}, 3000))
	pinAfter(t, s, d, victims[0])
	pinAfter(t, s, d, victims[1], victims[0])
	pinAfter(t, s, d, huge, victims...)
	// The cache is over its size (5000 > 4000): eviction must take unpinned
	// or unkept blobs, least recently used first.
	res, err := s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 4000, PinFor: 720 * time.Hour, MaxPinnedBytes: 2500}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if res.Pinned != 2000 {
		t.Errorf("the pins keep %d bytes under a bound of 2500; want the two victims' 2000 (%+v)", res.Pinned, res)
	}
	for i, v := range victims {
		if _, err := s.StatBlob(ctx, v); err != nil {
			t.Errorf("a running Pod's pinned blob %d was evicted after one pin too large for the bound: %v", i, err)
		}
	}
}
