package cache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/regnorm/regnorm/cache"
)

// TestHoldRecord: a hold reads back as written, per upstream; none is the
// zero time; a record larger than a hold can be is refused, not read whole.
func TestHoldRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := inmemory.New()
	s := cache.New(d)
	if got, err := s.GetHold(ctx, "docker.io"); err != nil || !got.IsZero() {
		t.Fatalf("no record: %v, %v; want the zero time", got, err)
	}
	want := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.PutHold(ctx, "docker.io", want); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetHold(ctx, "docker.io"); err != nil || !got.Equal(want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if got, err := s.GetHold(ctx, "127.0.0.1:5000"); err != nil || !got.IsZero() {
		t.Fatalf("another upstream: %v, %v; want the zero time", got, err)
	}
	huge := `{"until":"2030-01-02T03:04:05Z","pad":"` + strings.Repeat("x", 1<<20) + `"}`
	if err := d.PutContent(ctx, "/holds/docker.io", []byte(huge)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetHold(ctx, "docker.io"); err == nil {
		t.Fatalf("a 1 MiB record read as %v", got)
	}
}
