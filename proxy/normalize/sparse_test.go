package normalize

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path"
	"slices"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

var (
	// sparseFile is a 1 MiB file with "head" at 0 and "X" at 700000, as
	// GNU tar -S archives it.
	sparseFile = regtest.File{Name: "var/big", Typeflag: tar.TypeGNUSparse, SparseSize: 1 << 20,
		Sparse: []regtest.SparseData{{Offset: 0, Data: []byte("head")}, {Offset: 700000, Data: []byte("X")}}}
	sparseLayer = []regtest.File{{Name: "var/", Typeflag: tar.TypeDir, Mode: 0o755}, sparseFile}
	// bothLayer has a sparse entry and an xattr on a symlink.
	bothLayer = append(slices.Clone(xattrLayer), regtest.File{Name: "etc/big", Typeflag: tar.TypeGNUSparse, SparseSize: 4096,
		Sparse: []regtest.SparseData{{Offset: 4095, Data: []byte("Y")}}})
)

// layerEntries reads a gzip layer blob from the store.
func layerEntries(t *testing.T, store *cache.Store, dgst digest.Digest) map[string]*tar.Header {
	t.Helper()
	rc, _, err := store.OpenVerified(context.Background(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string]*tar.Header{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if hdr.Name == "var/big" && (len(body) != 1<<20 || !bytes.HasPrefix(body, []byte("head")) || body[700000] != 'X') {
			t.Fatalf("var/big expanded to %d bytes", len(body))
		}
		out[hdr.Name] = hdr
	}
}

// TestGNUSparseRule: the sparse rule repackages the layers with GNU sparse
// entries and only those, writing them as regular files and keeping
// xattrs; the symlink rule alone strips xattrs and leaves a layer with
// only sparse entries as it is; both together do both in one
// repackaging. Without either, the original. Each rule set's variant is
// the same on a fresh cache, and the report names each rule's change.
func TestGNUSparseRule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	img := build(t, regtest.ImageOptions{}, baseLayer, sparseLayer, bothLayer)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	sparseOnly := ruleset.Set{GNUSparse: true, DiffIDs: true}
	xattrOnly := ruleset.Set{SymlinkXattrs: true, DiffIDs: true}
	all := ruleset.Set{SymlinkXattrs: true, GNUSparse: true, DiffIDs: true}
	variants := func() (map[string]Result, *cache.Store) {
		store := cache.New(inmemory.New())
		e, src := newEngine(store), newSource(store, img)
		out := map[string]Result{}
		for _, rules := range []ruleset.Set{sparseOnly, xattrOnly, all, {DiffIDs: true}} {
			res, err := e.Normalize(ctx, src, manifestOf(img), rules)
			if err != nil {
				t.Fatalf("%s: %v", rules.Key(), err)
			}
			out[rules.Key()] = res
		}
		return out, store
	}
	first, store := variants()
	second, _ := variants()
	for key, res := range first {
		if second[key].Manifest.Digest != res.Manifest.Digest {
			t.Errorf("%s: %s, then %s on a fresh cache", key, res.Manifest.Digest, second[key].Manifest.Digest)
		}
	}
	if res := first[ruleset.DiffIDs]; res.Changed() {
		t.Fatalf("without the layer rules: %+v", res.Verdict)
	}
	for _, tc := range []struct {
		rules ruleset.Set
		// what each layer's change kinds are (none: the layer stays)
		want [3][]string
		// whether the symlink keeps its xattr
		xattrKept bool
	}{
		{sparseOnly, [3][]string{nil, {rewrite.KindGNUSparse}, {rewrite.KindGNUSparse}}, true},
		// Stripping cannot leave a sparse entry as it is: bothLayer's is
		// written expanded, and the report says so.
		{xattrOnly, [3][]string{nil, nil, {rewrite.KindSymlinkXattrs, rewrite.KindGNUSparse}}, false},
		{all, [3][]string{nil, {rewrite.KindGNUSparse}, {rewrite.KindSymlinkXattrs, rewrite.KindGNUSparse}}, false},
	} {
		res := first[tc.rules.Key()]
		if !res.Changed() {
			t.Fatalf("%s: original served", tc.rules.Key())
		}
		var got [3][]string
		for _, c := range res.Verdict.Changes {
			for i := range got {
				if c.Path == "layers["+string(rune('0'+i))+"]" {
					got[i] = append(got[i], c.Kind)
				}
			}
		}
		var nm ocispec.Manifest
		json.Unmarshal(res.Manifest.Content, &nm)
		for i := range got {
			if !slices.Equal(got[i], tc.want[i]) || (tc.want[i] == nil) != (nm.Layers[i].Digest == m.Layers[i].Digest) {
				t.Fatalf("%s: layer %d: changes %q (digest %s, original %s), want %q", tc.rules.Key(), i, got[i], nm.Layers[i].Digest, m.Layers[i].Digest, tc.want[i])
			}
		}
		if nm.Layers[1].Digest != m.Layers[1].Digest {
			if hdr := layerEntries(t, store, nm.Layers[1].Digest)["var/big"]; hdr.Typeflag != tar.TypeReg || hdr.Size != 1<<20 {
				t.Fatalf("%s: var/big is %+v", tc.rules.Key(), hdr)
			}
		}
		entries := layerEntries(t, store, nm.Layers[2].Digest)
		if _, kept := entries["etc/link"].PAXRecords["SCHILY.xattr.user.rpm"]; kept != tc.xattrKept || entries["etc/big"].Typeflag != tar.TypeReg {
			t.Fatalf("%s: xattr kept %v, etc/big %+v", tc.rules.Key(), kept, entries["etc/big"])
		}
	}
	v, err := store.GetLayerVerdict(ctx, m.Layers[2].Digest)
	if err != nil || v.Scan != scanVersion || v.Sparse != 1 || !slices.Equal(v.Expanded, []string{"etc/big"}) || v.Repacked == "" || len(v.Made) != 1 || v.Made[0].Transform != "expand" {
		t.Fatalf("verdict %+v, %v", v, err)
	}
}

// TestVerdictBeforeSparseRule: a layer verdict recorded before scans
// counted sparse entries is not taken for a layer without them: a rule set
// with the sparse rule scans the layer again (once), one without it takes
// the verdict as it is and reads nothing.
func TestVerdictBeforeSparseRule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	img := build(t, regtest.ImageOptions{}, sparseLayer)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	layer := m.Layers[0].Digest
	store := cache.New(inmemory.New())
	var gc ocispec.Image
	json.Unmarshal(img.Config, &gc)
	// What the scan of an earlier version recorded: a clean layer.
	old := cache.LayerVerdict{Original: layer, Compression: "gzip", Entries: 2, OriginalDiffID: gc.RootFS.DiffIDs[0]}
	if err := store.PutLayerVerdict(ctx, old); err != nil {
		t.Fatal(err)
	}
	e, src := newEngine(store), newSource(store, img)
	if res, err := e.Normalize(ctx, src, manifestOf(img), ruleset.Set{SymlinkXattrs: true}); err != nil || res.Changed() || len(src.blobReads()) != 0 {
		t.Fatalf("the symlink rule alone: %+v, %v, read %v", res.Verdict, err, src.blobReads())
	}
	res, err := e.Normalize(ctx, src, manifestOf(img), ruleset.Set{GNUSparse: true})
	if err != nil || !res.Changed() || res.Verdict.Changes[0].Kind != rewrite.KindGNUSparse {
		t.Fatalf("the sparse rule over an old verdict: %+v, %v", res.Verdict, err)
	}
	v, err := store.GetLayerVerdict(ctx, layer)
	if err != nil || v.Scan != scanVersion || v.Sparse != 1 {
		t.Fatalf("verdict after the new scan: %+v, %v", v, err)
	}
	reads := len(src.blobReads())
	if res, err := newEngine(store).Normalize(ctx, src, manifestOf(img), ruleset.Set{GNUSparse: true, ConfigMediaType: true}); err != nil || !res.Changed() ||
		len(src.blobReads()) != reads {
		t.Fatalf("another rule set with the sparse rule: %+v, %v, read %v", res.Verdict, err, src.blobReads()[reads:])
	}

	// An earlier scan's verdict with a symlink repackaging is scanned
	// again even for the symlink rule alone: that repackaging wrote sparse
	// entries as broken 'S' headers, and could not be rebuilt byte for
	// byte by this version.
	store = cache.New(inmemory.New())
	earlier := []byte("an earlier version's repackaging")
	in, err := store.IngestBlob(ctx, digest.FromBytes(earlier), int64(len(earlier)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write(earlier); err != nil {
		t.Fatal(err)
	}
	if err := in.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	repacked := old
	repacked.Repacked, repacked.Size, repacked.DiffID = digest.FromBytes(earlier), int64(len(earlier)), digest.FromString("its diff ID")
	repacked.Removals = []cache.XattrRemoval{{Path: "etc/link", Keys: []string{"SCHILY.xattr.user.rpm"}}}
	if err := store.PutLayerVerdict(ctx, repacked); err != nil {
		t.Fatal(err)
	}
	src = newSource(store, img)
	if _, err := newEngine(store).Normalize(ctx, src, manifestOf(img), ruleset.Set{SymlinkXattrs: true}); err != nil || len(src.blobReads()) == 0 {
		t.Fatalf("the symlink rule over an earlier repackaging: %v, read %v", err, src.blobReads())
	}
	if v, err := store.GetLayerVerdict(ctx, layer); err != nil || v.Scan != scanVersion || v.Repacked == repacked.Repacked {
		t.Fatalf("verdict after the new scan: %+v, %v", v, err)
	}
}

// TestSparseBombLeftUntouched: a layer whose sparse entry declares a
// terabyte is left as it is (too large, under normalize.maxLayerSize as
// its expanded size), noted in the report, and the refusal is recorded:
// it is not tried again under the same limit.
func TestSparseBombLeftUntouched(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bomb := []regtest.File{{Name: "bomb", Typeflag: tar.TypeGNUSparse, SparseSize: 1 << 40,
		Sparse: []regtest.SparseData{{Offset: 1<<40 - 1, Data: []byte("x")}}}}
	img := build(t, regtest.ImageOptions{}, baseLayer, bomb)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	store := cache.New(inmemory.New())
	e, src := newEngine(store), newSource(store, img)
	e.opts.MaxLayerSize = 1 << 20
	res, err := e.Normalize(ctx, src, manifestOf(img), ruleset.Set{GNUSparse: true})
	if err != nil || res.Changed() {
		t.Fatalf("%+v, %v", res.Verdict, err)
	}
	if len(res.Verdict.Changes) != 1 || res.Verdict.Changes[0].Kind != KindLayerUntouched || res.Verdict.Changes[0].Path != "layers[1]" ||
		res.Verdict.Limited.LayerSize != 1<<20 {
		t.Fatalf("report: %+v", res.Verdict)
	}
	v, err := store.GetLayerVerdict(ctx, m.Layers[1].Digest)
	if err != nil || len(v.Made) != 1 || v.Made[0].Skipped != "too-large" || v.Made[0].Limit != 1<<20 {
		t.Fatalf("verdict %+v, %v", v, err)
	}
}

// TestEarlierRepackagingEvicted: an earlier scan's verdict whose symlink
// repackaging was evicted (as derived layers are, to be rebuilt on demand)
// is scanned again, and the images that hold the layer are normalized, not
// refused for a verdict that names a missing blob: the repackaging is kept
// while its derived record can rebuild it, and made again (the same bytes)
// when that record is gone too.
func TestEarlierRepackagingEvicted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	img := build(t, regtest.ImageOptions{}, baseLayer, xattrLayer)
	// Other images with the layer, one for each case (an image's own
	// normalization, once recorded, reads no layer verdict).
	others := []regtest.Image{build(t, regtest.ImageOptions{}, xattrLayer), build(t, regtest.ImageOptions{Architecture: "arm64"}, xattrLayer)}
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	layer := m.Layers[1].Digest
	drv := inmemory.New()
	store := cache.New(drv)
	src := newSource(store, append(others, img)...)
	rules := ruleset.Set{SymlinkXattrs: true}
	if _, err := newEngine(store).Normalize(ctx, src, manifestOf(img), rules); err != nil {
		t.Fatal(err)
	}
	v, err := store.GetLayerVerdict(ctx, layer)
	if err != nil || v.Repacked == "" {
		t.Fatalf("verdict %+v, %v", v, err)
	}
	earlier := v
	earlier.Scan, earlier.Sparse, earlier.Expanded, earlier.Made = 0, 0, nil, nil // as an earlier version wrote it
	r := earlier.Repacked
	evict := func(kind string) {
		t.Helper()
		if err := drv.Delete(ctx, path.Join("/"+kind, r.Algorithm().String(), r.Encoded()[:2], r.Encoded())); err != nil {
			t.Fatal(err)
		}
	}
	for i, tc := range []struct {
		name  string
		evict []string
		// remade: the repackaging is in the cache after the normalization.
		remade bool
	}{
		// (In this order: the first makes the repackaging and its record
		// again, for the second to evict.)
		{"evicted with its record", []string{"blobs", "derived"}, true},
		{"evicted, its record left", []string{"blobs"}, false},
	} {
		if err := store.PutLayerVerdict(ctx, v); err != nil { // while it is there
			t.Fatal(err)
		}
		if err := store.PutLayerVerdict(ctx, earlier); err != nil {
			t.Fatal(err)
		}
		for _, kind := range tc.evict {
			evict(kind)
		}
		res, err := newEngine(store).Normalize(ctx, src, manifestOf(others[i]), rules)
		if err != nil || !res.Changed() {
			t.Fatalf("%s: another image with the layer: %+v, %v", tc.name, res.Verdict, err)
		}
		got, err := store.GetLayerVerdict(ctx, layer)
		if err != nil || got.Scan != scanVersion || got.Repacked != r {
			t.Fatalf("%s: verdict after the new scan: %+v, %v (want the repackaging %s)", tc.name, got, err, r)
		}
		if _, err := store.StatBlob(ctx, r); (err == nil) != tc.remade {
			t.Fatalf("%s: the repackaging in the cache: %v, want remade %v", tc.name, err, tc.remade)
		}
	}
}

// TestRebuildNotBoundByHoles: a layer made under other bounds, with more
// holes filled than holesBound allows now (an earlier version's symlink
// repackaging of a PAX sparse file had no such bound; here the same shape
// made as an expansion), is rebuilt after its eviction as it was: the
// bytes are pinned by the digest the variant names, and a rebuild that
// refused them would fail every pull of that variant for good.
func TestRebuildNotBoundByHoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	holes := []regtest.File{{Name: "holes", Typeflag: tar.TypeGNUSparse, SparseSize: 96 << 20,
		Sparse: []regtest.SparseData{{Offset: 96<<20 - 1, Data: []byte("x")}}}}
	img := build(t, regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, holes)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	layer := m.Layers[0]
	if bound := holesBound(layer.Size); bound >= 96<<20 {
		t.Fatalf("holesBound(%d) = %d: the layer's holes are within it", layer.Size, bound)
	}
	store := cache.New(inmemory.New())
	src := newSource(store, img)
	// What an earlier version made of it, unbounded.
	var made bytes.Buffer
	res, err := rewrite.TransformLayer(&made, bytes.NewReader(img.Layers[0]), rewrite.Limits{}, rewrite.LayerTransform{Expand: true})
	if err != nil {
		t.Fatal(err)
	}
	d := cache.Derived{Digest: res.Digest, Kind: cache.DerivedLayer, Source: layer.Digest, Transform: "expand"}
	if err := store.PutDerived(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := newEngine(store).RebuildLayer(ctx, src, d); err != nil {
		t.Fatalf("rebuild of a layer made before the bound: %v", err)
	}
	if info, err := store.StatBlob(ctx, res.Digest); err != nil || info.Size != res.Size {
		t.Fatalf("rebuilt layer: %+v, %v", info, err)
	}
	// Made anew now, the same layer is refused.
	if _, err := newEngine(store).Normalize(ctx, src, manifestOf(img), ruleset.Set{GNUSparse: true}); err != nil {
		t.Fatal(err)
	}
	if v, err := store.GetLayerVerdict(ctx, layer.Digest); err != nil || len(v.Made) != 1 || v.Made[0].Skipped != "amplifies" {
		t.Fatalf("verdict %+v, %v", v, err)
	}
}

// TestDiffIDsOfALayerLeftForItsHoles: a layer the sparse rule leaves
// untouched because of what it would make (its holes beyond the bound),
// not because its read failed, still gives its diff ID from its verdict:
// a config whose diff IDs are short is mended, not refused.
func TestDiffIDsOfALayerLeftForItsHoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bomb := []regtest.File{{Name: "bomb", Typeflag: tar.TypeGNUSparse, SparseSize: 1 << 30,
		Sparse: []regtest.SparseData{{Offset: 1<<30 - 1, Data: []byte("x")}}}}
	good := build(t, regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerZstd}, baseLayer, bomb)
	var gc ocispec.Image
	json.Unmarshal(good.Config, &gc)
	img := withDiffIDs(t, good, gc.RootFS.DiffIDs[:1]) // short: the bomb's is missing
	store := cache.New(inmemory.New())
	res, err := newEngine(store).Normalize(ctx, newSource(store, img), manifestOf(img), ruleset.Set{DiffIDs: true, GNUSparse: true})
	if err != nil || !res.Changed() {
		t.Fatalf("%+v, %v; want the diff IDs mended", res.Verdict, err)
	}
	var nm ocispec.Manifest
	json.Unmarshal(res.Manifest.Content, &nm)
	rc, _, err := store.OpenVerified(ctx, nm.Config.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var nc ocispec.Image
	if err := json.NewDecoder(rc).Decode(&nc); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(nc.RootFS.DiffIDs, gc.RootFS.DiffIDs) {
		t.Fatalf("diff IDs %v, want %v", nc.RootFS.DiffIDs, gc.RootFS.DiffIDs)
	}
}
