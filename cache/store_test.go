package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/internal/schema1"
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
		{"two ingests of one digest both commit", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// Two upstreams' downloads of one digest run apart and both
			// commit: the second replaces the first with the same verified
			// bytes, and a reader of the first reads it whole.
			first, err := s.IngestBlob(ctx, dgst, int64(len(content)))
			if err != nil {
				t.Fatal(err)
			}
			second, err := s.IngestBlob(ctx, dgst, int64(len(content)))
			if err != nil {
				t.Fatal(err)
			}
			half := len(content) / 2
			for _, step := range []struct {
				in *cache.Ingest
				p  []byte
			}{{first, content[:half]}, {second, content[:half]}, {first, content[half:]}, {second, content[half:]}} {
				if _, err := step.in.Write(step.p); err != nil {
					t.Fatal(err)
				}
			}
			if err := first.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			rc, _, err := s.OpenVerified(ctx, dgst)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			head := make([]byte, 100)
			if _, err := io.ReadFull(rc, head); err != nil {
				t.Fatal(err)
			}
			if err := second.Commit(ctx); err != nil {
				t.Fatalf("the second commit: %v", err)
			}
			rest, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(append(head, rest...), content) {
				t.Fatalf("the reader of the first commit: %d bytes, %v", len(head)+len(rest), err)
			}
			assertBlob(t, s, dgst, content)
			var left []string
			err = d.Walk(ctx, "/_uploads", func(fi storagedriver.FileInfo) error {
				if !fi.IsDir() {
					left = append(left, fi.Path())
				}
				return nil
			})
			if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
				t.Fatalf("walk uploads: %v", err)
			}
			if len(left) > 0 {
				t.Fatalf("temporary objects left behind: %v", left)
			}
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
			rc, _, err := s.OpenBlob(ctx, dgst, 0)
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
			if _, _, err := s.OpenBlob(ctx, dgst, 0); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("open: got %v, want ErrNotFound", err)
			}
		}},
		{"manifest round trip keeps bytes", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			body := []byte(`{"schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
			want := cache.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromBytes(body), Content: body}
			if err := s.PutManifest(ctx, "docker.io", "library/app", want); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetManifest(ctx, "docker.io", "library/app", want.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if got.MediaType != want.MediaType || !bytes.Equal(got.Content, want.Content) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		}},
		{"manifest under a wrong digest is refused", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			err := s.PutManifest(ctx, "docker.io", "library/app", cache.Manifest{MediaType: ocispec.MediaTypeImageIndex, Digest: dgst, Content: []byte(`{"manifests":[]}`)})
			if !errors.Is(err, cache.ErrDigestMismatch) {
				t.Fatalf("put: got %v, want ErrDigestMismatch", err)
			}
			if _, err := s.GetManifest(ctx, "docker.io", "library/app", dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("get: got %v, want ErrNotFound", err)
			}
		}},
		{"a manifest's type is its content's", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// The cache is shared by digest: a writer cannot give bytes a
			// type of its own, and a record that holds one (written before
			// types came from content) is read with the content's.
			body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}`)
			m := cache.Manifest{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(body), Content: body}
			if err := s.PutManifest(ctx, "docker.io", "library/app", m); !errors.Is(err, cache.ErrMediaTypeMismatch) {
				t.Fatalf("put as an index: got %v, want ErrMediaTypeMismatch", err)
			}
			if err := s.PutManifest(ctx, "docker.io", "library/app", cache.Manifest{MediaType: "text/html", Digest: digest.FromString("<p>"), Content: []byte("<p>")}); !errors.Is(err, cache.ErrMediaTypeMismatch) {
				t.Fatalf("put a page: got %v, want ErrMediaTypeMismatch", err)
			}
			enc := m.Digest.Encoded()
			poisoned := fmt.Sprintf(`{"mediaType":%q,"content":%q}`, ocispec.MediaTypeImageIndex, base64.StdEncoding.EncodeToString(body))
			if err := d.PutContent(ctx, "/manifests/sha256/"+enc[:2]+"/"+enc, []byte(poisoned)); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetManifest(ctx, "docker.io", "library/app", m.Digest)
			if err != nil || got.MediaType != "application/vnd.docker.distribution.manifest.v2+json" || !bytes.Equal(got.Content, body) {
				t.Fatalf("got %q, %v; want the Docker manifest type", got.MediaType, err)
			}
		}},
		{"schema 1 copies are per repository", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// A schema 1 digest covers the payload: the signed manifest and
			// its bare payload share it. Each repository keeps the bytes it
			// was given, and an entry at the shared path (written before
			// copies were per repository) is not read.
			img, err := regtest.BuildSchema1(regtest.Schema1Options{}, regtest.Schema1Layer{Files: []regtest.File{{Name: "a", Content: []byte("a")}}})
			if err != nil {
				t.Fatal(err)
			}
			signed := cache.Manifest{MediaType: schema1.MediaTypeSigned, Digest: img.Digest, Content: img.Manifest}
			bare := cache.Manifest{MediaType: schema1.MediaTypeUnsigned, Digest: img.Digest, Content: img.Payload}
			if err := s.PutManifest(ctx, "docker.io", "old/app", signed); err != nil {
				t.Fatal(err)
			}
			if err := s.PutManifest(ctx, "hostile", "any/repo", bare); err != nil {
				t.Fatal(err)
			}
			if err := s.PutManifest(ctx, "docker.io", "evil/app", bare); err != nil {
				t.Fatal(err)
			}
			enc := img.Digest.Encoded()
			legacy := fmt.Sprintf(`{"mediaType":%q,"content":%q}`, bare.MediaType, base64.StdEncoding.EncodeToString(bare.Content))
			if err := d.PutContent(ctx, "/manifests/sha256/"+enc[:2]+"/"+enc, []byte(legacy)); err != nil {
				t.Fatal(err)
			}
			for _, tt := range []struct {
				upstream, repo string
				want           cache.Manifest
			}{{"docker.io", "old/app", signed}, {"hostile", "any/repo", bare}, {"docker.io", "evil/app", bare}} {
				got, err := s.GetManifest(ctx, tt.upstream, tt.repo, img.Digest)
				if err != nil || got.MediaType != tt.want.MediaType || !bytes.Equal(got.Content, tt.want.Content) {
					t.Errorf("%s/%s: got %s, %d bytes, %v; want %s, %d bytes", tt.upstream, tt.repo, got.MediaType, len(got.Content), err,
						tt.want.MediaType, len(tt.want.Content))
				}
			}
			if _, err := s.GetManifest(ctx, "docker.io", "library/app", img.Digest); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("a repository that holds no copy: got %v, want ErrNotFound", err)
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
		{"referrers records per upstream, repository and subject; bounded and checked", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			ref := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("sig"), Size: 3, ArtifactType: "a/b"}
			rec := cache.ReferrersRecord{Subject: dgst, Manifests: []ocispec.Descriptor{ref}, FromTag: true, CheckedAt: now}
			if err := s.PutReferrers(ctx, "127.0.0.1:5000", "library/redis", rec); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetReferrers(ctx, "127.0.0.1:5000", "library/redis", dgst)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, rec) {
				t.Fatalf("got %+v, want %+v", got, rec)
			}
			for _, other := range []struct {
				upstream, repo string
				subject        digest.Digest
			}{{"127.0.0.1_5000", "library/redis", dgst}, {"docker.io", "library/redis", dgst}, {"127.0.0.1:5000", "library/other", dgst}, {"127.0.0.1:5000", "library/redis", ref.Digest}} {
				if _, err := s.GetReferrers(ctx, other.upstream, other.repo, other.subject); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("get %v: got %v, want ErrNotFound", other, err)
				}
			}
			many := rec
			many.Manifests = slices.Repeat([]ocispec.Descriptor{ref}, mediatype.MaxReferrers+1)
			if err := s.PutReferrers(ctx, "docker.io", "library/redis", many); err == nil {
				t.Fatal("a record of more referrers than regnorm serves was written")
			}
			// A record at the path of another subject is not its answer.
			moved, _ := json.Marshal(cache.ReferrersRecord{Subject: ref.Digest, Manifests: rec.Manifests})
			path := "/referrers/docker.io/library/redis/_referrers/sha256/" + dgst.Encoded()
			if err := d.PutContent(ctx, path, moved); err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetReferrers(ctx, "docker.io", "library/redis", dgst); err == nil || errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("a record of another subject: got %v, want an error", err)
			}
		}},
		{"normalization verdicts, one per rule set", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			body := []byte(`{"schemaVersion":2,"manifests":[]}`)
			normalized := cache.Manifest{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(body), Content: body}
			const both, configOnly = "config-media-type,symlink-xattrs", "config-media-type"
			n := cache.Normalization{Original: dgst, Normalized: normalized.Digest, MediaType: "m", Rules: both,
				Changes: []cache.Change{{Kind: "config-media-type", Path: "config.mediaType", Old: "a", New: "b"}}}
			if err := s.PutNormalization(ctx, n); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("verdict pointing at a missing manifest: got %v, want ErrNotFound", err)
			}
			if err := s.PutManifest(ctx, "docker.io", "library/app", normalized); err != nil {
				t.Fatal(err)
			}
			if err := s.PutNormalization(ctx, n); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetNormalization(ctx, dgst, both)
			if err != nil || got.Normalized != n.Normalized || len(got.Changes) != 1 || !reflect.DeepEqual(got.Changes, n.Changes) {
				t.Fatalf("got %+v, %v", got, err)
			}
			// Another rule set's variant is another record.
			if _, err := s.GetNormalization(ctx, dgst, configOnly); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("verdict of another rule set: got %v, want ErrNotFound", err)
			}
			if err := s.PutNormalization(ctx, cache.Normalization{Original: dgst, Rules: configOnly}); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetNormalization(ctx, dgst, configOnly); err != nil || got.Normalized != "" {
				t.Fatalf("clean variant: %+v, %v", got, err)
			}
			if got, err := s.GetNormalization(ctx, dgst, both); err != nil || got.Normalized != n.Normalized {
				t.Fatalf("the other variant after the clean one: %+v, %v", got, err)
			}
			for _, bad := range []string{"../x", "a b", "A", ",", "a,,b"} {
				if err := s.PutNormalization(ctx, cache.Normalization{Original: dgst, Rules: bad}); err == nil {
					t.Errorf("rule set %q accepted as a key", bad)
				}
			}
			clean := cache.Normalization{Original: normalized.Digest, Rules: both}
			if err := s.PutNormalization(ctx, clean); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetNormalization(ctx, normalized.Digest, both); err != nil || got.Normalized != "" {
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
		{"node reports", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if got, err := s.ListNodeReports(ctx); err != nil || len(got) != 0 {
				t.Fatalf("empty list: %v %v", got, err)
			}
			if err := s.PutNodeReport(ctx, cache.NodeReport{}); err == nil {
				t.Fatal("a report without a node name was kept")
			}
			a := cache.NodeReport{Node: "node-a", Address: "10.0.0.1", ContainerdVersion: "2.3.4", ReadsHostsToml: false, Reason: "config_path is a list"}
			b := cache.NodeReport{Node: "node-b", Address: "10.0.0.2", ContainerdVersion: "1.6.20", ReadsHostsToml: true}
			for _, r := range []cache.NodeReport{a, b} {
				if err := s.PutNodeReport(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			a.ReadsHostsToml, a.Reason = true, "" // node-a fixed: its report is replaced
			if err := s.PutNodeReport(ctx, a); err != nil {
				t.Fatal(err)
			}
			all, err := s.ListNodeReports(ctx)
			if err != nil || len(all) != 2 {
				t.Fatalf("list: %v, %v", all, err)
			}
			byNode := map[string]cache.NodeReport{}
			for _, r := range all {
				byNode[r.Node] = r
			}
			if !reflect.DeepEqual(byNode["node-a"], a) || !reflect.DeepEqual(byNode["node-b"], b) {
				t.Fatalf("list: %+v", all)
			}
			if got, err := s.GetNodeReport(ctx, "node-a"); err != nil || !reflect.DeepEqual(got, a) {
				t.Fatalf("get: %+v, %v", got, err)
			}
			if _, err := s.GetNodeReport(ctx, "never-reported"); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("get an unknown node: %v, want ErrNotFound", err)
			}
			if err := s.DeleteNodeReport(ctx, "node-b"); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteNodeReport(ctx, "never-reported"); err != nil {
				t.Fatalf("forgetting an unknown node: %v", err)
			}
			if all, err := s.ListNodeReports(ctx); err != nil || len(all) != 1 || all[0].Node != "node-a" {
				t.Fatalf("after delete: %+v, %v", all, err)
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
			// Evicted, a repackaging with the record it is rebuilt from can
			// still be named; a made layer with none is left out.
			made := digest.FromString("a made layer, evicted, without a record")
			v.Made = []cache.MadeLayer{{Transform: "expand", Digest: made, Size: 1, DiffID: made}, {Transform: "strip,expand", Skipped: "amplifies"}}
			if err := s.PutDerived(ctx, cache.Derived{Digest: dgst, Kind: cache.DerivedLayer, Source: layer}); err != nil {
				t.Fatal(err)
			}
			if err := d.Delete(ctx, "/blobs/sha256/"+dgst.Encoded()[:2]+"/"+dgst.Encoded()); err != nil {
				t.Fatal(err)
			}
			if err := s.PutLayerVerdict(ctx, v); err != nil {
				t.Fatalf("a verdict naming an evicted repackaging with its record: %v", err)
			}
			if got, err := s.GetLayerVerdict(ctx, layer); err != nil || got.Repacked != dgst || len(got.Made) != 1 || got.Made[0].Skipped != "amplifies" {
				t.Fatalf("got %+v, %v; want the repackaging and the refusal kept, the unrecorded made layer left out", got, err)
			}
		}},
		{"records bound the details of their changes", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// As a version without the bound wrote it: a layer's paths, whole.
			e := cache.ReportEntry{Upstream: "docker.io", Repository: "library/x", Original: dgst, Rules: "symlink-xattrs",
				Changes: []cache.Change{{Kind: "symlink-xattrs", Details: slices.Repeat([]string{strings.Repeat("p", 512<<10)}, 16)}}}
			raw, _ := json.Marshal(e)
			sum := sha256.Sum256([]byte(e.Key()))
			h := hex.EncodeToString(sum[:])
			if err := d.PutContent(ctx, "/reports/"+h[:2]+"/"+h, raw); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetReport(ctx, e.Key())
			if err != nil {
				t.Fatal(err)
			}
			listed, err := s.ListReports(ctx)
			if err != nil || len(listed) != 1 {
				t.Fatalf("listed %d, %v", len(listed), err)
			}
			if err := s.PutReport(ctx, e); err != nil {
				t.Fatal(err)
			}
			stored, _ := d.GetContent(ctx, "/reports/"+h[:2]+"/"+h)
			for what, c := range map[string]cache.Change{"read": got.Changes[0], "listed": listed[0].Changes[0]} {
				if len(c.Details) != 0 || c.Unlisted != 16 {
					t.Errorf("%s: %d details, %d unlisted; want 0 and 16", what, len(c.Details), c.Unlisted)
				}
			}
			if len(stored) > 4<<10 {
				t.Errorf("written: %d bytes", len(stored))
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
		{"eviction: least recently used first, never open or retained", func(t *testing.T, d storagedriver.StorageDriver, _ *cache.Store) {
			// A clock ahead of the storage's, so this process's own uses
			// order the blobs, not the write times.
			clk := newTestClock(time.Now().Add(time.Minute))
			s := cache.New(d, cache.WithClock(clk.Now))
			var dgsts []digest.Digest
			for i := range 4 {
				b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
				dd := digest.FromBytes(b)
				ingest(t, s, dd, -1, b)
				dgsts = append(dgsts, dd)
			}
			// Use order: 1 is open (being served), 0 is retained (a
			// rewritten config), 3 was used after 1 and 2.
			open, _, err := s.OpenBlob(ctx, dgsts[1], 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Retain(ctx, dgsts[0]); err != nil {
				t.Fatal(err)
			}
			clk.Add(time.Second)
			readAll(t, s, dgsts[3])
			res, err := s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 3000}, clk.Now())
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
			// Open, 1 cannot go even though it is now the oldest candidate.
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 2000}, clk.Now()); err != nil || res.Evicted != 1 {
				t.Fatalf("with 1 open: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[1]); err != nil {
				t.Fatal("an open blob was evicted")
			}
			if err := open.Close(); err != nil {
				t.Fatal(err)
			}
			res, err = s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1000}, clk.Now())
			if err != nil || res.Evicted != 1 || res.Remaining.Bytes != 1000 {
				t.Fatalf("after close: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[1]); !errors.Is(err, cache.ErrNotFound) {
				t.Error("the least recently used blob stayed once closed")
			}
			// The age limit: a blob unused for longer than MaxAge goes.
			ingest(t, s, dgst, -1, content)
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxAge: time.Hour}, clk.Now()); err != nil || res.Evicted != 0 {
				t.Fatalf("young blob: %+v %v", res, err)
			}
			if res, err := s.Evict(ctx, cache.EvictionPolicy{MaxAge: time.Hour}, clk.Now().Add(2*time.Hour)); err != nil || res.Evicted != 1 {
				t.Fatalf("old blob: %+v %v", res, err)
			}
			// Only the retained blob is left, and no limit removes it.
			res, err = s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1, MaxAge: time.Hour}, clk.Now().Add(2*time.Hour))
			if err != nil || res.Evicted != 0 || res.Remaining.Blobs != 1 {
				t.Fatalf("retained blob: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, dgsts[0]); err != nil {
				t.Error("a retained blob was evicted")
			}
		}},
		{"eviction keeps a pinned blob for PinFor", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			var pinned, unpinned digest.Digest
			for i, dd := range []*digest.Digest{&pinned, &unpinned} {
				b := bytes.Repeat([]byte{byte('p' + i)}, 1000)
				*dd = digest.FromBytes(b)
				ingest(t, s, *dd, -1, b)
			}
			if err := s.Pin(ctx, pinned); err != nil {
				t.Fatal(err)
			}
			// The pin's time is the storage's: the evictions' times are
			// counted from now.
			const pinFor = 720 * time.Hour
			policy := cache.EvictionPolicy{MaxBytes: 1, PinFor: pinFor}
			now := time.Now()
			if res, err := s.Evict(ctx, policy, now.Add(time.Hour)); err != nil || res.Evicted != 1 {
				t.Fatalf("within PinFor: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, pinned); err != nil {
				t.Fatalf("a pinned blob was evicted within PinFor: %v", err)
			}
			if _, err := s.StatBlob(ctx, unpinned); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("the unpinned blob stayed over the size limit: %v", err)
			}
			if res, err := s.Evict(ctx, policy, now.Add(pinFor+time.Hour)); err != nil || res.Evicted != 1 {
				t.Fatalf("past PinFor: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, pinned); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("a pin older than PinFor kept its blob: %v", err)
			}
			// A pin long expired is removed: the records stay bounded.
			pin := "/pinned/sha256/" + pinned.Encoded()[:2] + "/" + pinned.Encoded()
			if _, err := d.Stat(ctx, pin); err != nil {
				t.Fatalf("the pin went before it was long expired: %v", err)
			}
			if _, err := s.Evict(ctx, policy, now.Add(2*pinFor+time.Hour)); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Stat(ctx, pin); !errors.As(err, new(storagedriver.PathNotFoundError)) {
				t.Fatalf("a pin expired for PinFor is still recorded: %v", err)
			}
		}},
		{"pins keep blobs up to MaxPinnedBytes, the pins renewed longest ago giving way first", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			var blobs [4]digest.Digest // 0, 1, 2 pinned in that order; 3 not
			for i := range blobs {
				b := bytes.Repeat([]byte{byte('k' + i)}, 1000)
				blobs[i] = digest.FromBytes(b)
				ingest(t, s, blobs[i], -1, b)
			}
			pinAfter(t, s, d, blobs[0])
			pinAfter(t, s, d, blobs[1], blobs[0])
			pinAfter(t, s, d, blobs[2], blobs[0], blobs[1])
			// Without a bound every pin keeps its blob, past the size limit.
			policy := cache.EvictionPolicy{MaxBytes: 1, PinFor: 720 * time.Hour}
			now := time.Now().Add(time.Hour)
			res, err := s.Evict(ctx, policy, now)
			if err != nil || res.Evicted != 1 || res.Pinned != 3000 || res.PinnedOver != 0 {
				t.Fatalf("no bound: %+v %v", res, err)
			}
			// Two blobs' worth: the one pinned first gives way.
			policy.MaxPinnedBytes = 2500
			res, err = s.Evict(ctx, policy, now)
			if err != nil || res.Evicted != 1 || res.Pinned != 2000 || res.PinnedOver != 0 || res.Remaining.Bytes != 2000 {
				t.Fatalf("bound 2500: %+v %v", res, err)
			}
			for i, want := range []bool{false, true, true, false} {
				if _, err := s.StatBlob(ctx, blobs[i]); (err == nil) != want {
					t.Errorf("bound 2500: blob %d present %v, want %v", i, err == nil, want)
				}
			}
			// Renewed, 1 is now the latest pin: with room for one, 2 goes.
			pinAfter(t, s, d, blobs[1], blobs[2])
			policy.MaxPinnedBytes = 1000
			if res, err = s.Evict(ctx, policy, now); err != nil || res.Evicted != 1 || res.Pinned != 1000 {
				t.Fatalf("bound 1000 after renewing 1: %+v %v", res, err)
			}
			if _, err := s.StatBlob(ctx, blobs[1]); err != nil {
				t.Errorf("the latest pin's blob was evicted: %v", err)
			}
			if _, err := s.StatBlob(ctx, blobs[2]); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("a pin renewed earlier kept its blob past the bound: %v", err)
			}
			// Past the bound but with room in the cache, a pinned blob stays
			// and is counted as over the bound.
			b := bytes.Repeat([]byte{'z'}, 500)
			extra := digest.FromBytes(b)
			ingest(t, s, extra, -1, b)
			pinAfter(t, s, d, extra, blobs[1])
			res, err = s.Evict(ctx, cache.EvictionPolicy{MaxBytes: 10000, PinFor: 720 * time.Hour, MaxPinnedBytes: 500}, now)
			if err != nil || res.Evicted != 0 || res.Pinned != 500 || res.PinnedOver != 1000 {
				t.Fatalf("room in the cache: %+v %v", res, err)
			}
		}},
		{"a verified read of a damaged blob fails and removes it", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			for name, damage := range map[string]func([]byte) []byte{
				"one byte flipped": func(b []byte) []byte { b = bytes.Clone(b); b[len(b)/2] ^= 1; return b },
				"cut short":        func(b []byte) []byte { return b[:len(b)-512] },
			} {
				ingest(t, s, dgst, -1, content)
				if err := d.PutContent(ctx, blobDataPath(dgst), damage(content)); err != nil {
					t.Fatal(err)
				}
				// A fresh store: no remembered size, as after a restart.
				s := cache.New(d)
				rc, _, err := s.OpenVerified(ctx, dgst)
				if err != nil {
					t.Fatal(err)
				}
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
				if !errors.Is(err, cache.ErrDigestMismatch) && !errors.Is(err, cache.ErrSizeMismatch) {
					t.Fatalf("%s: read %v, want a digest or size mismatch", name, err)
				}
				if _, err := s.StatBlob(ctx, dgst); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("%s: the damaged blob stayed: %v", name, err)
				}
			}
		}},
		{"a verified read of a sound blob reads it whole", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			ingest(t, s, dgst, -1, content)
			rc, info, err := s.OpenVerified(ctx, dgst)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, content) || info.Size != int64(len(content)) {
				t.Fatalf("read %d bytes, %v", len(got), err)
			}
		}},
		{"repository links", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if ok, err := s.HasLink(ctx, "docker.io", "team/shared", dgst); err != nil || ok {
				t.Fatalf("before: %v %v", ok, err)
			}
			if err := s.PutLink(ctx, "docker.io", "team/shared", dgst); err != nil {
				t.Fatal(err)
			}
			for _, tt := range []struct {
				upstream, repo string
				want           bool
			}{{"docker.io", "team/shared", true}, {"docker.io", "team/private", false}, {"quay.io", "team/shared", false}, {"docker.io", "team", false}} {
				if ok, err := s.HasLink(ctx, tt.upstream, tt.repo, dgst); err != nil || ok != tt.want {
					t.Errorf("%s/%s: %v %v, want %v", tt.upstream, tt.repo, ok, err, tt.want)
				}
			}
		}},
		{"sent records are per upstream", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			if ok, err := s.HasSent(ctx, "docker.io", dgst); err != nil || ok {
				t.Fatalf("before: %v %v", ok, err)
			}
			if err := s.PutSent(ctx, "docker.io", dgst); err != nil {
				t.Fatal(err)
			}
			for _, tt := range []struct {
				upstream string
				want     bool
			}{{"docker.io", true}, {"quay.io", false}, {"docker.io:5000", false}} {
				if ok, err := s.HasSent(ctx, tt.upstream, dgst); err != nil || ok != tt.want {
					t.Errorf("%s: %v %v, want %v", tt.upstream, ok, err, tt.want)
				}
			}
			// A link of the same upstream is not a sent record.
			if err := s.PutLink(ctx, "quay.io", "team/shared", dgst); err != nil {
				t.Fatal(err)
			}
			if ok, err := s.HasSent(ctx, "quay.io", dgst); err != nil || ok {
				t.Errorf("a link reads as sent: %v %v", ok, err)
			}
		}},
		{"clean uploads removes only old leftovers", func(t *testing.T, d storagedriver.StorageDriver, s *cache.Store) {
			// What a crash leaves: a temporary object written but never
			// moved. (On S3 an upload not yet committed is no object at all;
			// a bucket lifecycle rule ends such multipart uploads.)
			if err := d.PutContent(ctx, "/_uploads/leftover/data", content); err != nil {
				t.Fatal(err)
			}
			if n, err := s.CleanUploads(ctx, time.Hour, 2*time.Hour, time.Now()); err != nil || n != 0 {
				t.Fatalf("young upload: removed %d, %v", n, err)
			}
			if n, err := s.CleanUploads(ctx, time.Hour, 2*time.Hour, time.Now().Add(90*time.Minute)); err != nil || n != 1 {
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
	rc, info, err := s.OpenBlob(context.Background(), dgst, 0)
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
	err := d.Walk(context.Background(), "/_uploads", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			left = append(left, fi.Path())
		}
		return nil
	})
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		t.Fatalf("walk uploads: %v", err)
	}
	if len(left) > 0 {
		t.Fatalf("temporary objects left behind: %v", left)
	}
}

// TestUsesSurviveRestartsAndReplicas: a blob's use is recorded in the
// store, so a restarted process does not take a blob read a minute ago for
// one unused since it was written, and a replica keeps what another one
// serves. (Filesystem, whose write times a test can set back.)
func TestUsesSurviveRestartsAndReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	d := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10})
	s := cache.New(d)
	old := time.Now().Add(-3 * time.Hour)
	var read, unread digest.Digest
	for i, dd := range []*digest.Digest{&read, &unread} {
		b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
		*dd = digest.FromBytes(b)
		ingest(t, s, *dd, -1, b)
		if err := os.Chtimes(filepath.Join(root, blobDataPath(*dd)), old, old); err != nil {
			t.Fatal(err)
		}
	}
	readAll(t, cache.New(d), read) // another process, or this one before a restart

	restarted := cache.New(d)
	res, err := restarted.Evict(ctx, cache.EvictionPolicy{MaxAge: 2 * time.Hour}, time.Now())
	if err != nil || res.Evicted != 1 {
		t.Fatalf("age limit after a restart: %+v %v", res, err)
	}
	if _, err := restarted.StatBlob(ctx, read); err != nil {
		t.Fatalf("a blob read a moment ago was evicted as unused for 3h: %v", err)
	}
	// Over the size limit, the grace keeps what another process just used.
	if res, err := restarted.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1, Grace: 2 * time.Hour}, time.Now()); err != nil || res.Evicted != 0 {
		t.Fatalf("within the grace: %+v %v", res, err)
	}
	if res, err := restarted.Evict(ctx, cache.EvictionPolicy{MaxBytes: 1, Grace: 2 * time.Hour}, time.Now().Add(3*time.Hour)); err != nil || res.Evicted != 1 {
		t.Fatalf("after the grace: %+v %v", res, err)
	}
}

// readAll opens dgst, reads it to the end and closes it: one use.
func readAll(t *testing.T, s *cache.Store, dgst digest.Digest) {
	t.Helper()
	rc, _, err := s.OpenBlob(context.Background(), dgst, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Fatal(err)
	}
}

// blobDataPath is where the store keeps a blob's bytes (cache/paths.go),
// for tests that damage them behind its back.
func blobDataPath(dgst digest.Digest) string {
	return "/blobs/" + dgst.Algorithm().String() + "/" + dgst.Encoded()[:2] + "/" + dgst.Encoded() + "/data"
}

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock(t time.Time) *testClock { return &testClock{t: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
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

// TestCleanUploadsAbortsStaleMultipartUploads: on S3 a blob being written
// is a multipart upload, invisible through the storage driver; one a killed
// process left is aborted once it is older than the age limit, and a young
// one (a live writer's, perhaps) stays.
func TestCleanUploadsAbortsStaleMultipartUploads(t *testing.T) {
	if s3Server == nil {
		t.Skip("no S3 server (REGNORM_VERSITYGW_BIN unset; scripts/test.sh sets it and REGNORM_REQUIRE_ALL)")
	}
	ctx := context.Background()
	d, uploads := newS3Store(t) // before going parallel: see runStoreSuite
	t.Parallel()
	s := cache.New(d, cache.WithMultipartUploads(uploads))
	start := func(content []byte) *cache.Ingest {
		in, err := s.IngestBlob(ctx, digest.FromBytes(content), int64(len(content)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.Write(content); err != nil {
			t.Fatal(err)
		}
		return in
	}
	// The defaults: 4 × 30 s idle, an hour's fetch timeout plus 10 min.
	idle, lifetime := 2*time.Minute, 70*time.Minute
	live := []byte("a download that is slow, but alive")
	in := start(live)
	if n, err := s.CleanUploads(ctx, idle, lifetime, time.Now().Add(30*time.Minute)); err != nil || n != 0 {
		t.Fatalf("a live writer's upload: removed %d, %v", n, err)
	}
	if err := in.Commit(ctx); err != nil {
		t.Fatalf("the live writer's upload was ended under it: %v", err)
	}
	assertBlob(t, s, digest.FromBytes(live), live)

	start([]byte("never finished")) // abandoned, as by SIGKILL: no Commit, no Cancel
	if n, err := s.CleanUploads(ctx, idle, lifetime, time.Now().Add(2*time.Hour)); err != nil || n != 1 {
		t.Fatalf("stale upload: removed %d, %v; want 1", n, err)
	}
	// Nothing is left to abort.
	if n, err := uploads.AbortStale(ctx, "/_uploads/", time.Now().Add(24*time.Hour)); err != nil || n != 0 {
		t.Fatalf("after cleaning, %d uploads were still in progress (%v)", n, err)
	}
}

// TestMergeLeavesItsInputAlone: merging into an entry copied from a
// listing must not write into the listing's own tags.
func TestMergeLeavesItsInputAlone(t *testing.T) {
	t.Parallel()
	tags := make([]string, 3, 8) // room to grow in place
	copy(tags, []string{"a", "b", "c"})
	listed := cache.ReportEntry{Tags: tags}
	e := listed
	e.Merge(cache.ReportEntry{Tags: []string{"0"}})
	if !slices.Equal(listed.Tags, []string{"a", "b", "c"}) || !slices.Equal(e.Tags, []string{"a", "b", "c", "0"}) {
		t.Fatalf("listing %v, merged %v", listed.Tags, e.Tags)
	}
}

// TestReportClientsKeepTheRecent: an entry lists the most recent client
// versions, bounded: made-up versions cannot keep real ones out for good.
func TestReportClientsKeepTheRecent(t *testing.T) {
	t.Parallel()
	var e cache.ReportEntry
	e.Merge(cache.ReportEntry{Clients: []string{"1.6.8"}})
	for i := range 2 * cache.MaxReportClients {
		e.Merge(cache.ReportEntry{Clients: []string{fmt.Sprintf("1.7.%d", i)}})
	}
	e.Merge(cache.ReportEntry{Clients: []string{"1.6.8"}})
	e.Merge(cache.ReportEntry{Clients: []string{"1.7.31"}})
	if len(e.Clients) != cache.MaxReportClients || e.Clients[len(e.Clients)-2] != "1.6.8" || e.Clients[len(e.Clients)-1] != "1.7.31" ||
		slices.Contains(e.Clients, "1.7.0") {
		t.Fatalf("clients %v", e.Clients)
	}
}

// A derived object made a second way keeps the first and adds the second;
// the same way twice is recorded once, and the ways are bounded.
func TestDerivedOrigins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := cache.New(inmemory.New())
	d := digest.FromString("repackaged")
	put := func(source string, transform string) {
		t.Helper()
		if err := s.PutDerived(ctx, cache.Derived{Digest: d, Kind: cache.DerivedLayer, Source: digest.FromString(source), Transform: transform}); err != nil {
			t.Fatal(err)
		}
	}
	put("gzip form", "")
	put("zstd form", "strip,gzip")
	put("gzip form", "")
	got, err := s.GetDerived(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	want := []cache.Origin{{Source: digest.FromString("gzip form")}, {Source: digest.FromString("zstd form"), Transform: "strip,gzip"}}
	if !slices.Equal(got.Origins(), want) || got.Source != want[0].Source {
		t.Fatalf("origins %+v, want %+v", got.Origins(), want)
	}
	if from := got.From(want[1]); from.Source != want[1].Source || from.Transform != "strip,gzip" || len(from.Also) != 0 {
		t.Fatalf("From: %+v", from)
	}
	for i := range 40 {
		put(fmt.Sprint("form ", i), "")
	}
	if got, _ := s.GetDerived(ctx, d); len(got.Origins()) > 16 {
		t.Fatalf("%d origins recorded", len(got.Origins()))
	}
}

// TestBoundChanges: a record lists at most 100 changes, and the details of
// its changes are cut to a budget, in order, a line too long for a page is
// left out, and what is left out is counted; the input is left alone, and
// the same input keeps the same lines.
func TestBoundChanges(t *testing.T) {
	t.Parallel()
	line := strings.Repeat("x", 1000)
	many := slices.Repeat([]string{line}, 100) // 100 KB
	notes := slices.Repeat([]cache.Change{{Kind: "layer-untouched", Details: []string{"zstd-window"}}}, 150)
	tests := []struct {
		name         string
		in           []cache.Change
		wantDetails  []int // per change
		wantUnlisted []int
		wantCut      int // changes left out
	}{
		{"within bounds", []cache.Change{{Details: []string{"a", "b"}, Unlisted: 3}}, []int{2}, []int{3}, 0},
		{"one change over the budget", []cache.Change{{Details: many, Unlisted: 7}}, []int{65}, []int{35 + 7}, 0},
		{"the budget spans changes", []cache.Change{{Details: many[:60]}, {Details: many[:60]}, {Details: []string{"y"}}},
			[]int{60, 5, 0}, []int{0, 55, 1}, 0},
		{"a line too long", []cache.Change{{Details: []string{"a", strings.Repeat("z", 3000), "b"}}}, []int{1}, []int{2}, 0},
		{"too many changes", notes, slices.Repeat([]int{1}, 100), make([]int, 100), 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			before := slices.Clone(tt.in)
			got, cut := cache.BoundChanges(tt.in)
			if len(got) != len(tt.wantDetails) || cut != tt.wantCut {
				t.Fatalf("%d changes kept, %d left out; want %d and %d", len(got), cut, len(tt.wantDetails), tt.wantCut)
			}
			size := 0
			for i, c := range got {
				size += len(strings.Join(c.Details, ""))
				if len(c.Details) != tt.wantDetails[i] || c.Unlisted != tt.wantUnlisted[i] {
					t.Errorf("change %d: %d details, %d unlisted; want %d and %d", i, len(c.Details), c.Unlisted, tt.wantDetails[i], tt.wantUnlisted[i])
				}
			}
			if size > 64<<10 {
				t.Errorf("%d bytes of details", size)
			}
			if again, _ := cache.BoundChanges(tt.in); !reflect.DeepEqual(tt.in, before) || !reflect.DeepEqual(again, got) {
				t.Error("the input changed, or a second bound differs")
			}
		})
	}
}

// TestPruneReports: pruning keeps the entries written last, as many as the
// count and the bytes allow, and removes the others.
func TestPruneReports(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := cache.New(inmemory.New())
	entry := func(i int) cache.ReportEntry {
		return cache.ReportEntry{Upstream: "docker.io", Repository: fmt.Sprintf("team/app%d", i), Original: digest.FromString(fmt.Sprint(i)), Rules: "none"}
	}
	var newest int64
	for i := range 8 {
		if err := s.PutReport(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
		if i >= 5 {
			b, _ := json.Marshal(entry(i))
			newest += int64(len(b))
		}
	}
	kept := func() []string {
		t.Helper()
		all, err := s.ListReports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var repos []string
		for _, e := range all {
			repos = append(repos, e.Repository)
		}
		slices.Sort(repos)
		return repos
	}
	if n, err := s.PruneReports(ctx, 6, 1<<20); err != nil || n != 2 {
		t.Fatalf("pruned %d, %v; want 2", n, err)
	}
	if got := kept(); len(got) != 6 || got[0] != "team/app2" {
		t.Fatalf("kept %v; want app2 to app7", got)
	}
	if n, err := s.PruneReports(ctx, 100, newest); err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3", n, err)
	}
	if got := kept(); !slices.Equal(got, []string{"team/app5", "team/app6", "team/app7"}) {
		t.Fatalf("kept %v; want the three written last", got)
	}
}

// TestMergeBoundsTags: an entry lists at most MaxReportTags tags, the most
// recently served, the one just served last: an upstream may answer any tag
// with the same image, and a tag served again stays, whatever its name.
func TestMergeBoundsTags(t *testing.T) {
	t.Parallel()
	var e cache.ReportEntry
	for i := range 100 {
		tag := fmt.Sprintf("t%03d", 99-i) // each new tag sorts first
		e.Merge(cache.ReportEntry{Tags: []string{tag}})
		e.Merge(cache.ReportEntry{Tags: []string{"latest"}}) // served again and again
		if len(e.Tags) > cache.MaxReportTags || e.Tags[len(e.Tags)-1] != "latest" || !slices.Contains(e.Tags, tag) {
			t.Fatalf("after %s: tags %v", tag, e.Tags)
		}
	}
	if want := fmt.Sprintf("t%03d", cache.MaxReportTags-2); e.Tags[0] != want {
		t.Fatalf("tags %v: the oldest kept is %s, want %s", e.Tags, e.Tags[0], want)
	}
}

// TestWalksStopWhenTheContextEnds: the listings maintenance makes (usage,
// eviction, the records) stop when their context ends, though the
// filesystem driver's walk does not look at it: a pass over a large cache
// does not hold a shutdown past its drain.
func TestWalksStopWhenTheContextEnds(t *testing.T) {
	t.Parallel()
	s := cache.New(filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 10}))
	for i := range 3 {
		content := []byte(fmt.Sprintf("blob %d", i))
		ingest(t, s, digest.FromBytes(content), int64(len(content)), content)
	}
	if u, err := s.Usage(context.Background()); err != nil || u.Blobs != 3 {
		t.Fatalf("usage: %+v, %v; want 3 blobs", u, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Usage(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("usage on an ended context: %v, want context.Canceled", err)
	}
}

// pinAfter pins dgst, again until the storage's time for it is later than
// prev's (a filesystem's times are a clock tick apart): the order is the
// test's, not the clock's.
func pinAfter(t *testing.T, s *cache.Store, d storagedriver.StorageDriver, dgst digest.Digest, prev ...digest.Digest) {
	t.Helper()
	for {
		if err := s.Pin(context.Background(), dgst); err != nil {
			t.Fatal(err)
		}
		at := pinTime(t, d, dgst)
		if !slices.ContainsFunc(prev, func(p digest.Digest) bool { return !at.After(pinTime(t, d, p)) }) {
			return
		}
	}
}

// pinTime is when dgst was last pinned, by the storage's clock.
func pinTime(t *testing.T, d storagedriver.StorageDriver, dgst digest.Digest) time.Time {
	t.Helper()
	fi, err := d.Stat(context.Background(), "/pinned/sha256/"+dgst.Encoded()[:2]+"/"+dgst.Encoded())
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}
