package normalize

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// withDiffIDs is img with its config's diff IDs replaced by ids.
func withDiffIDs(t *testing.T, img regtest.Image, ids []digest.Digest) regtest.Image {
	t.Helper()
	var config ocispec.Image
	var m ocispec.Manifest
	json.Unmarshal(img.Config, &config)
	json.Unmarshal(img.Manifest, &m)
	config.RootFS.DiffIDs = ids
	img.Config, _ = json.Marshal(config)
	m.Config.Digest, m.Config.Size = digest.FromBytes(img.Config), int64(len(img.Config))
	img.Manifest, _ = json.Marshal(m)
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	return img
}

// TestDiffIDs: an image that needs nothing costs its config and no layer;
// a diff ID that is its compressed blob's digest costs that one layer; a
// short list costs every layer; each gets the layers' diff IDs, the same
// digest on a fresh cache. A rule set that scans every layer anyway (the
// symlink rule's) finds a wrong diff ID the config alone cannot show,
// without reading a layer twice. A blob that fails its digest gives no diff
// ID and no verdict.
func TestDiffIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	good := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer, []regtest.File{{Name: "etc/motd", Content: []byte("hi\n")}})
	var gm ocispec.Manifest
	var gc ocispec.Image
	json.Unmarshal(good.Manifest, &gm)
	json.Unmarshal(good.Config, &gc)
	right := gc.RootFS.DiffIDs
	layer := func(i int) digest.Digest { return gm.Layers[i].Digest }
	config := digest.FromBytes
	rules := ruleset.Set{DiffIDs: true}
	for _, tc := range []struct {
		name      string
		img       regtest.Image
		rules     ruleset.Set
		wantReads []digest.Digest // besides the config
		changed   bool
	}{
		{"right", good, rules, nil, false},
		{"compressed digest", withDiffIDs(t, good, []digest.Digest{right[0], layer(1), right[2]}), rules, []digest.Digest{layer(1)}, true},
		{"short", withDiffIDs(t, good, right[:1]), rules, []digest.Digest{layer(0), layer(1), layer(2)}, true},
		{"long", withDiffIDs(t, good, append(slices.Clone(right), right[0])), rules, []digest.Digest{layer(0), layer(1), layer(2)}, true},
		// A diff ID of another tar looks right to the config alone...
		{"another tar's, no layer rule", withDiffIDs(t, good, []digest.Digest{right[0], right[1], right[0]}), rules, nil, false},
		// ...and is found by the scans the symlink rule makes anyway.
		{"another tar's, symlink rule", withDiffIDs(t, good, []digest.Digest{right[0], right[1], right[0]}), ruleset.Set{DiffIDs: true, SymlinkXattrs: true},
			[]digest.Digest{layer(0), layer(1), layer(2)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			normalized := func() (Result, *memSource) {
				store := cache.New(inmemory.New())
				src := newSource(store, tc.img)
				res, err := newEngine(store).Normalize(ctx, src, manifestOf(tc.img), tc.rules)
				if err != nil {
					t.Fatal(err)
				}
				return res, src
			}
			res, src := normalized()
			reads := src.blobReads()
			slices.Sort(reads)
			want := append([]digest.Digest{config(tc.img.Config)}, tc.wantReads...)
			slices.Sort(want)
			if !slices.Equal(reads, want) {
				t.Errorf("read %v, want %v (the config, and the layers to check)", reads, want)
			}
			if res.Changed() != tc.changed {
				t.Fatalf("changed: %v, want %v (%+v)", res.Changed(), tc.changed, res.Verdict.Changes)
			}
			if !tc.changed {
				if res.Verdict.Rules != tc.rules.Key() || res.Manifest.Digest != tc.img.ManifestDigest {
					t.Fatalf("verdict %+v", res.Verdict)
				}
				return
			}
			var m ocispec.Manifest
			json.Unmarshal(res.Manifest.Content, &m)
			if !tc.rules.SymlinkXattrs && !slices.EqualFunc(m.Layers, gm.Layers, func(a, b ocispec.Descriptor) bool { return a.Digest == b.Digest && a.Size == b.Size }) {
				t.Errorf("layers changed: %+v", m.Layers)
			}
			var c ocispec.Image
			rc, _, err := src.store.OpenVerified(ctx, m.Config.Digest)
			if err != nil {
				t.Fatal(err)
			}
			json.NewDecoder(rc).Decode(&c)
			rc.Close()
			if !tc.rules.SymlinkXattrs && !slices.Equal(c.RootFS.DiffIDs, right) {
				t.Errorf("diff IDs %v, want the layers' %v", c.RootFS.DiffIDs, right)
			}
			if !slices.ContainsFunc(res.Verdict.Changes, func(c cache.Change) bool { return c.Kind == rewrite.KindDiffIDs }) {
				t.Errorf("changes %+v", res.Verdict.Changes)
			}
			if again, _ := normalized(); again.Manifest.Digest != res.Manifest.Digest {
				t.Errorf("a fresh cache made %s, the first %s", again.Manifest.Digest, res.Manifest.Digest)
			}
		})
	}

	t.Run("unverified", func(t *testing.T) {
		t.Parallel()
		img := withDiffIDs(t, good, []digest.Digest{right[0], layer(1), right[2]})
		store := cache.New(inmemory.New())
		src := newSource(store, img)
		// A real layer, but not the blob the digest names.
		src.blobs[layer(1)] = good.Layers[2]
		if res, err := newEngine(store).Normalize(ctx, src, manifestOf(img), rules); err == nil {
			t.Fatalf("a diff ID from a blob that failed its digest: %s", res.Manifest.Content)
		}
		if _, err := store.GetNormalization(ctx, img.ManifestDigest, rules.Key()); err == nil {
			t.Error("a verdict was recorded")
		}
	})

	t.Run("verdicts spare the read", func(t *testing.T) {
		t.Parallel()
		// A layer the symlink rule scanned has its diff ID in its verdict:
		// the diff IDs rule reads it no more.
		img := withDiffIDs(t, good, []digest.Digest{right[0], layer(1), right[2]})
		store := cache.New(inmemory.New())
		if _, err := newEngine(store).Normalize(ctx, newSource(store, good), manifestOf(good), ruleset.Set{SymlinkXattrs: true}); err != nil {
			t.Fatal(err)
		}
		src := newSource(store, img)
		res, err := newEngine(store).Normalize(ctx, src, manifestOf(img), rules)
		if err != nil || !res.Changed() {
			t.Fatalf("%+v, %v", res.Verdict, err)
		}
		if got := src.blobReads(); !slices.Equal(got, []digest.Digest{config(img.Config)}) {
			t.Errorf("read %v, want the config alone", got)
		}
	})
}

// TestDiffIDsSkipWhatAScanLeft: a layer the symlink rule's scan left
// untouched for a limit (too large here) is not read again for its diff ID
// in the same computation: it would fail the same way.
func TestDiffIDsSkipWhatAScanLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	good := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer)
	var gc ocispec.Image
	json.Unmarshal(good.Config, &gc)
	img := withDiffIDs(t, good, gc.RootFS.DiffIDs[:1]) // short: every layer is suspect
	store := cache.New(inmemory.New())
	src := newSource(store, img)
	e := newEngine(store)
	e.opts.MaxLayerSize = 16 // every layer expands further
	if _, err := e.Normalize(ctx, src, manifestOf(img), ruleset.Set{DiffIDs: true, SymlinkXattrs: true}); err != nil {
		t.Fatal(err)
	}
	count := map[digest.Digest]int{}
	for _, d := range src.blobReads() {
		count[d]++
	}
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	for _, l := range m.Layers {
		if count[l.Digest] != 1 {
			t.Errorf("layer %s read %d times, want once (its scan)", l.Digest, count[l.Digest])
		}
	}
}
