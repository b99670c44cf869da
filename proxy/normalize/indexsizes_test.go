package normalize

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// wrongSizes is an index as Docker's "docker manifest" before 18.09 could
// write it: the linux/amd64 entry 100 bytes short, linux/arm64's right, and
// an s390x entry (a platform the engine does not read) short too.
func wrongSizes(t *testing.T) (cache.Manifest, regtest.Image, regtest.Image) {
	t.Helper()
	amd64, arm64 := build(t, regtest.ImageOptions{}, baseLayer), build(t, regtest.ImageOptions{}, xattrLayer)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd64.ManifestDigest, Size: int64(len(amd64.Manifest)) - 100, Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: arm64.ManifestDigest, Size: int64(len(arm64.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: digest.FromString("s390x"), Size: 427, Platform: &ocispec.Platform{OS: "linux", Architecture: "s390x"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	return cache.Manifest{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(raw), Content: raw}, amd64, arm64
}

// TestIndexSizes: the index sizes rule gives an entry the size of the child
// it fetched, reads no blob, leaves the platforms it does not read as they
// are, and makes the same digest on a fresh cache; without the rule the
// index is served as it is; a child that is not what its digest names is
// an error, with no verdict recorded.
func TestIndexSizes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rules := ruleset.Set{IndexSizes: true}
	m, amd64, arm64 := wrongSizes(t)

	normalized := func() (Result, *memSource) {
		store := cache.New(inmemory.New())
		src := newSource(store, amd64, arm64)
		res, err := newEngine(store).Normalize(ctx, src, m, rules)
		if err != nil {
			t.Fatal(err)
		}
		return res, src
	}
	res, src := normalized()
	if !res.Changed() {
		t.Fatal("an index with a wrong size was served as it is")
	}
	if reads := src.blobReads(); len(reads) != 0 {
		t.Errorf("the index sizes rule read blobs %v", reads)
	}
	var got ocispec.Index
	json.Unmarshal(res.Manifest.Content, &got)
	if want := int64(len(amd64.Manifest)); got.Manifests[0].Size != want || got.Manifests[0].Digest != amd64.ManifestDigest {
		t.Errorf("amd64 entry %+v, want its digest with size %d", got.Manifests[0], want)
	}
	if got.Manifests[2].Size != 427 {
		t.Errorf("the s390x entry, whose child was not read, got size %d", got.Manifests[2].Size)
	}
	if c := res.Verdict.Changes; len(c) != 1 || c[0].Kind != rewrite.KindIndexSize || c[0].Path != "manifests[0].size" {
		t.Errorf("changes %+v", c)
	}
	if again, _ := normalized(); again.Manifest.Digest != res.Manifest.Digest {
		t.Errorf("a fresh cache made %s, the first %s", again.Manifest.Digest, res.Manifest.Digest)
	}

	store := cache.New(inmemory.New())
	if off, err := newEngine(store).Normalize(ctx, newSource(store, amd64, arm64), m, ruleset.Set{ConfigMediaType: true}); err != nil || off.Changed() {
		t.Errorf("without the rule: %v, changed %v", err, off.Changed())
	}

	// A source that hands another child under amd64's digest: an error,
	// never a size taken from the wrong bytes, and nothing recorded.
	store = cache.New(inmemory.New())
	bad := newSource(store, amd64, arm64)
	bad.manifests[amd64.ManifestDigest] = manifestOf(arm64)
	if res, err := newEngine(store).Normalize(ctx, bad, m, rules); err == nil {
		t.Fatalf("normalized with a child that is not the one named: %s", res.Manifest.Content)
	}
	if _, err := store.GetNormalization(ctx, m.Digest, rules.Key()+","+DefaultPlatforms().key()); err == nil {
		t.Error("a verdict was recorded")
	}
}
