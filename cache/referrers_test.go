package cache_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
)

// TestReferrersRecordSize: a record keeps what it was given at its own
// size: '<', '>' and '&' from an image or an upstream are written as
// themselves, not escaped sixfold; a record as json.Marshal wrote it (one
// of before) still reads the same; and a record larger than any regnorm
// writes is refused on write and an error on read, never read whole.
func TestReferrersRecordSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := inmemory.New()
	s := cache.New(d)
	subject := digest.FromString("subject")
	path := "/referrers/docker.io/library/app/_referrers/sha256/" + subject.Encoded()
	note := strings.Repeat("<&>", 100<<10)
	rec := cache.ReferrersRecord{Subject: subject, Verified: true, CheckedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("sig"), Size: 3,
			ArtifactType: "a/b", Annotations: map[string]string{"note": note}}}}
	if err := s.PutReferrers(ctx, "docker.io", "library/app", rec); err != nil {
		t.Fatal(err)
	}
	stored, err := d.GetContent(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) > len(note)+1<<10 {
		t.Fatalf("a record of %d bytes for %d bytes of annotation", len(stored), len(note))
	}
	if got, err := s.GetReferrers(ctx, "docker.io", "library/app", subject); err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("read back: %v, equal %v", err, reflect.DeepEqual(got, rec))
	}

	escaped, err := json.Marshal(rec)
	if err != nil || !bytes.Contains(escaped, []byte(`\u003c`)) {
		t.Fatalf("json.Marshal did not escape: %v", err)
	}
	if err := d.PutContent(ctx, path, escaped); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetReferrers(ctx, "docker.io", "library/app", subject); err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("an escaped record: %v, equal %v", err, reflect.DeepEqual(got, rec))
	}

	huge := rec
	huge.Manifests = []ocispec.Descriptor{rec.Manifests[0]}
	huge.Manifests[0].Annotations = map[string]string{"note": strings.Repeat("x", 8*mediatype.MaxManifestSize)}
	if err := s.PutReferrers(ctx, "docker.io", "library/app", huge); err == nil {
		t.Fatal("a record larger than a record may be was written")
	}
	// What no version writes (past the read bound, 32 MiB) is not read.
	b, _ := json.Marshal(huge)
	if err := d.PutContent(ctx, path, b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetReferrers(ctx, "docker.io", "library/app", subject); err == nil || errors.Is(err, cache.ErrNotFound) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a record of %d bytes: got %v, want an error saying it is too large", len(b), err)
	}
}
