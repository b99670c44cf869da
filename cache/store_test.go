package cache_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
)

// drivers is every driver the store suite runs on. S3 joins with the issue
// that adds it.
var drivers = map[string]func(t *testing.T) storagedriver.StorageDriver{
	"inmemory": func(t *testing.T) storagedriver.StorageDriver { return inmemory.New() },
	"filesystem": func(t *testing.T) storagedriver.StorageDriver {
		return filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 100})
	},
}

func TestStore(t *testing.T) {
	t.Parallel()
	for name, newDriver := range drivers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runStoreSuite(t, newDriver)
		})
	}
}

func runStoreSuite(t *testing.T, newDriver func(t *testing.T) storagedriver.StorageDriver) {
	ctx := context.Background()
	content := bytes.Repeat([]byte("regnorm-"), 4096)
	dgst := digest.FromBytes(content)

	tests := []struct {
		name string
		run  func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store)
	}{
		{"blob round trip with known size", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			ingest(t, s, dgst, int64(len(content)), content)
			assertBlob(t, s, dgst, content)
		}},
		{"blob round trip with unknown size", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			ingest(t, s, dgst, -1, content)
			assertBlob(t, s, dgst, content)
		}},
		{"wrong bytes are never published", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			bad := bytes.Clone(content)
			bad[10] ^= 0xff
			err := ingestErr(t, s, dgst, int64(len(bad)), bad)
			if !errors.Is(err, cache.ErrDigestMismatch) {
				t.Fatalf("commit: got %v, want ErrDigestMismatch", err)
			}
			assertAbsent(t, d, s, dgst)
		}},
		{"truncated content is never published", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			err := ingestErr(t, s, dgst, int64(len(content)), content[:100])
			if !errors.Is(err, cache.ErrSizeMismatch) {
				t.Fatalf("commit: got %v, want ErrSizeMismatch", err)
			}
			assertAbsent(t, d, s, dgst)
		}},
		{"content longer than announced is refused while writing", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			in, err := s.IngestBlob(ctx, dgst, 10)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := in.Write(content); !errors.Is(err, cache.ErrSizeMismatch) {
				t.Fatalf("write: got %v, want ErrSizeMismatch", err)
			}
			if err := in.Cancel(ctx); err != nil {
				t.Fatal(err)
			}
			assertAbsent(t, d, s, dgst)
		}},
		{"cancel leaves nothing", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			in, err := s.IngestBlob(ctx, dgst, -1)
			if err != nil {
				t.Fatal(err)
			}
			in.Write(content[:50])
			if err := in.Cancel(ctx); err != nil {
				t.Fatal(err)
			}
			assertAbsent(t, d, s, dgst)
		}},
		{"open seeks", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			ingest(t, s, dgst, -1, content)
			rc, _, err := s.OpenBlob(ctx, dgst)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			for _, off := range []int64{1000, 5, int64(len(content)) - 3} {
				if _, err := rc.Seek(off, io.SeekStart); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, 3)
				if _, err := io.ReadFull(rc, got); err != nil {
					t.Fatalf("read at %d: %v", off, err)
				}
				if want := content[off : off+3]; !bytes.Equal(got, want) {
					t.Fatalf("read at %d: got %q, want %q", off, got, want)
				}
			}
			if n, err := rc.Seek(-1, io.SeekEnd); err != nil || n != int64(len(content))-1 {
				t.Fatalf("seek from end: %d, %v", n, err)
			}
		}},
		{"missing blob", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if _, _, err := s.OpenBlob(ctx, dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("open: got %v, want ErrNotFound", err)
			}
		}},
		{"manifest round trip keeps bytes", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			body := []byte(`{"schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
			want := cache.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromBytes(body), Content: body}
			if err := s.PutManifest(ctx, want); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetManifest(ctx, want.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if got.MediaType != want.MediaType || !bytes.Equal(got.Content, want.Content) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		}},
		{"manifest under a wrong digest is refused", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			err := s.PutManifest(ctx, cache.Manifest{MediaType: "x", Digest: dgst, Content: []byte("{}")})
			if !errors.Is(err, cache.ErrDigestMismatch) {
				t.Fatalf("put: got %v, want ErrDigestMismatch", err)
			}
			if _, err := s.GetManifest(ctx, dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("get: got %v, want ErrNotFound", err)
			}
		}},
		{"tag records per upstream", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			a := cache.TagRecord{Digest: dgst, MediaType: "m", Size: 3, CheckedAt: now}
			if err := s.PutTag(ctx, "127.0.0.1:5000", "library/redis", "latest", a); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetTag(ctx, "127.0.0.1:5000", "library/redis", "latest")
			if err != nil {
				t.Fatal(err)
			}
			if got != a {
				t.Fatalf("got %+v, want %+v", got, a)
			}
			for _, other := range [][3]string{{"127.0.0.1_5000", "library/redis", "latest"}, {"127.0.0.1:5000", "library/redis", "7"}, {"docker.io", "library/redis", "latest"}} {
				if _, err := s.GetTag(ctx, other[0], other[1], other[2]); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("get %v: got %v, want ErrNotFound", other, err)
				}
			}
		}},
		{"normalization verdicts", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			body := []byte(`{"schemaVersion":2}`)
			normalized := cache.Manifest{MediaType: "m", Digest: digest.FromBytes(body), Content: body}
			n := cache.Normalization{Original: dgst, Normalized: normalized.Digest, MediaType: "m",
				Changes: []cache.Change{{Kind: "config-media-type", Path: "config.mediaType", Old: "a", New: "b"}}}
			if err := s.PutNormalization(ctx, n); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("verdict pointing at a missing manifest: got %v, want ErrNotFound", err)
			}
			if err := s.PutManifest(ctx, normalized); err != nil {
				t.Fatal(err)
			}
			if err := s.PutNormalization(ctx, n); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetNormalization(ctx, dgst)
			if err != nil || got.Normalized != n.Normalized || len(got.Changes) != 1 || !reflect.DeepEqual(got.Changes, n.Changes) {
				t.Fatalf("got %+v, %v", got, err)
			}
			clean := cache.Normalization{Original: normalized.Digest}
			if err := s.PutNormalization(ctx, clean); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetNormalization(ctx, normalized.Digest); err != nil || got.Normalized != "" {
				t.Fatalf("clean verdict: %+v, %v", got, err)
			}
		}},
		{"report entries", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if got, err := s.ListReports(ctx); err != nil || len(got) != 0 {
				t.Fatalf("empty list: %v %v", got, err)
			}
			t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
			a := cache.ReportEntry{Upstream: "docker.io", Repository: "library/redis", Original: dgst, Normalized: digest.FromString("n"), Tags: []string{"2.8"}, FirstServed: t0, LastServed: t0, TimesServed: 1}
			b := cache.ReportEntry{Upstream: "quay.io", Repository: "library/redis", Original: dgst}
			for _, e := range []cache.ReportEntry{a, b} {
				if err := s.PutReport(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.GetReport(ctx, a.Key())
			if err != nil || got.TimesServed != 1 || got.Tags[0] != "2.8" {
				t.Fatalf("get: %+v %v", got, err)
			}
			all, err := s.ListReports(ctx)
			if err != nil || len(all) != 2 {
				t.Fatalf("list: %d entries, %v", len(all), err)
			}
		}},
		{"produced blob is published under what was written", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			in, err := s.NewBlob(ctx)
			if err != nil {
				t.Fatal(err)
			}
			in.Write(content)
			if err := in.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if in.Digest() != dgst || in.Size() != int64(len(content)) {
				t.Fatalf("digest %s size %d", in.Digest(), in.Size())
			}
			assertBlob(t, s, dgst, content)
		}},
		{"layer verdicts", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			layer := digest.FromString("original layer")
			v := cache.LayerVerdict{Original: layer, Compression: "gzip", Entries: 3, Repacked: dgst, Size: int64(len(content)),
				DiffID: digest.FromString("diff"), Removals: []cache.XattrRemoval{{Path: "a", Keys: []string{"SCHILY.xattr.user.x"}}}}
			if err := s.PutLayerVerdict(ctx, v); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("verdict pointing at a missing blob: got %v, want ErrNotFound", err)
			}
			ingest(t, s, dgst, -1, content)
			if err := s.PutLayerVerdict(ctx, v); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetLayerVerdict(ctx, layer)
			if err != nil || got.Repacked != dgst || got.Removals[0].Keys[0] != "SCHILY.xattr.user.x" {
				t.Fatalf("got %+v, %v", got, err)
			}
			if _, err := s.GetLayerVerdict(ctx, dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("missing verdict: %v", err)
			}
		}},
		{"usage counts published blobs only", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if u, err := s.Usage(ctx); err != nil || u != (cache.Usage{}) {
				t.Fatalf("empty: %+v %v", u, err)
			}
			ingest(t, s, dgst, -1, content)
			in, _ := s.IngestBlob(ctx, digest.FromString("x"), -1)
			in.Write([]byte("unpublished"))
			defer in.Cancel(ctx)
			if u, err := s.Usage(ctx); err != nil || u.Blobs != 1 || u.Bytes != int64(len(content)) {
				t.Fatalf("usage: %+v %v", u, err)
			}
		}},
		{"eviction: least recently used first, never pinned or rewritten configs", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			var dgsts []digest.Digest
			for i := range 4 {
				b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
				dd := digest.FromBytes(b)
				ingest(t, s, dd, -1, b)
				dgsts = append(dgsts, dd)
			}
			// Use order: 1 is pinned (being served), 0 is a rewritten config,
			// 3 was used after 2.
			unpin := s.Pin(dgsts[1])
			if err := s.PutDerived(ctx, cache.Derived{Digest: dgsts[0], Kind: cache.DerivedConfig}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
			s.Pin(dgsts[3])()
			res, err := s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 3000}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if res.Evicted != 1 || res.Remaining.Bytes != 3000 {
				t.Fatalf("evict: %+v", res)
			}
			for i, want := range []bool{true, true, false, true} {
				if _, err := s.StatBlob(ctx, dgsts[i]); (err == nil) != want {
					t.Errorf("blob %d present: %v, want %v", i, err == nil, want)
				}
			}
			// Pinned, 1 cannot go even though it is now the oldest candidate.
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 2000}, time.Now()); err != nil || res.Evicted != 1 {
				t.Fatalf("with 1 pinned: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[1]); err != nil {
				t.Fatal("a pinned blob was evicted")
			}
			unpin()
			res, err = s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1000}, time.Now())
			if err != nil || res.Evicted != 1 || res.Remaining.Bytes != 1000 {
				t.Fatalf("after unpin: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[1]); !errors.Is(err, cache.ErrNotFound) {
				t.Error("the least recently used unpinned blob stayed")
			}
			// The age limit: a blob unused for longer than MaxAge goes.
			ingest(t, s, dgst, -1, content)
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxAge: time.Hour}, time.Now()); err != nil || res.Evicted != 0 {
				t.Fatalf("young blob: %+v %v", res, err)
			}
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxAge: time.Hour}, time.Now().Add(2*time.Hour)); err != nil || res.Evicted != 1 {
				t.Fatalf("old blob: %+v %v", res, err)
			}
			// Only the rewritten config is left, and no limit removes it.
			res, err = s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1, MaxAge: time.Hour}, time.Now().Add(2*time.Hour))
			if err != nil || res.Evicted != 0 || res.Remaining.Blobs != 1 {
				t.Fatalf("rewritten config: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[0]); err != nil {
				t.Error("a rewritten config was evicted")
			}
		}},
		{"clean uploads removes only old leftovers", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// What a crash leaves: a temporary object written but never
			// moved. (On S3 an upload not yet committed is no object at all;
			// a bucket lifecycle rule ends such multipart uploads.)
			if err := d.PutContent(ctx, "/_uploads/leftover/data", content); err != nil {
				t.Fatal(err)
			}
			if n, err := s.CleanUploads(ctx, time.Hour, time.Now()); err != nil || n != 0 {
				t.Fatalf("young upload: removed %d, %v", n, err)
			}
			if n, err := s.CleanUploads(ctx, time.Hour, time.Now().Add(2*time.Hour)); err != nil || n != 1 {
				t.Fatalf("old upload: removed %d, %v", n, err)
			}
			assertAbsent(t, d, s, dgst)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Construct before going parallel: aws-sdk-go v1 races between
			// building a session and another session's requests (a package
			// variable). regnorm builds one driver, before any request.
			d := newDriver(t)
			t.Parallel()
			tt.run(t, d, cache.New(d))
		})
	}
}

func ingest(t *testing.T, s *cache.Store, dgst digest.Digest, size int64, content []byte) {
	t.Helper()
	if err := ingestErr(t, s, dgst, size, content); err != nil {
		t.Fatal(err)
	}
}

func ingestErr(t *testing.T, s *cache.Store, dgst digest.Digest, size int64, content []byte) error {
	t.Helper()
	in, err := s.IngestBlob(context.Background(), dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write(content); err != nil {
		t.Fatal(err)
	}
	return in.Commit(context.Background())
}

func assertBlob(t *testing.T, s *cache.Store, dgst digest.Digest, want []byte) {
	t.Helper()
	rc, info, err := s.OpenBlob(context.Background(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || info.Size != int64(len(want)) {
		t.Fatalf("blob %s: got %d bytes (info %d), want %d", dgst, len(got), info.Size, len(want))
	}
}

// assertAbsent checks that neither the blob nor any temporary object is left.
func assertAbsent(t *testing.T, d storagedriver.StorageDriver, s *cache.Store, dgst digest.Digest) {
	t.Helper()
	if _, err := s.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("stat: got %v, want ErrNotFound", err)
	}
	var left []string
	d.Walk(context.Background(), "/_uploads", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			left = append(left, fi.Path())
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("temporary objects left behind: %v", left)
	}
}

func TestReportEntryMerge(t *testing.T) {
	t.Parallel()
	t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	e := cache.ReportEntry{Tags: []string{"b"}, FirstServed: t2, LastServed: t2, TimesServed: 2}
	e.Merge(cache.ReportEntry{Normalized: "sha256:x", Tags: []string{"a", "b"}, FirstServed: t1, LastServed: t1, TimesServed: 3, UnnormalizedPulls: 1, LastUnnormalizedPull: t2})
	if e.FirstServed != t1 || e.LastServed != t2 || e.TimesServed != 5 || e.UnnormalizedPulls != 1 || e.Normalized != "sha256:x" {
		t.Fatalf("merge: %+v", e)
	}
	if len(e.Tags) != 2 || e.Tags[0] != "a" || e.Tags[1] != "b" {
		t.Fatalf("tags: %v", e.Tags)
	}
}
