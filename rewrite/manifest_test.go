package rewrite

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestManifestGolden normalizes every case in testdata/manifest and compares
// the output bytes and the change list with want.json and changes.json.
func TestManifestGolden(t *testing.T) {
	t.Parallel()
	dirs, err := filepath.Glob("testdata/manifest/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	wantChanged := map[string]bool{"docker-octet-stream": true, "oci-octet-stream": true, "odd-formatting": true}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			mediaType := strings.TrimSpace(string(readFile(t, dir, "mediatype")))
			in := readFile(t, dir, "manifest.json")
			config := readFile(t, dir, "config.json")

			plan, err := PlanManifest(mediaType, in)
			if err != nil {
				t.Fatal(err)
			}
			var cfg []byte
			if plan.ConfigMediaTypeSuspect {
				cfg = config
			}
			got, err := NormalizeManifest(ManifestInput{MediaType: mediaType, Manifest: in, Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			if got.Changed() != wantChanged[name] {
				t.Fatalf("changed = %v, want %v (%+v)", got.Changed(), wantChanged[name], got.Changes)
			}
			if !got.Changed() && !bytes.Equal(got.Content, in) {
				t.Fatal("a manifest that needs nothing was not returned byte for byte")
			}
			changes, _ := json.MarshalIndent(got.Changes, "", "  ")
			golden(t, filepath.Join(dir, "want.json"), got.Content)
			golden(t, filepath.Join(dir, "changes.json"), append(changes, '\n'))
			checkManifestProperties(t, mediaType, in, config, got)
		})
	}
}

// checkManifestProperties holds for every result: the digest is the digest
// of the bytes, the output is valid JSON equal to the input except for the
// config media type, and normalizing again changes nothing.
func checkManifestProperties(t *testing.T, mediaType string, in, config []byte, got Result) {
	t.Helper()
	if got.Digest != digest.FromBytes(got.Content) {
		t.Fatal("digest does not verify")
	}
	var before, after map[string]any
	if err := json.Unmarshal(in, &before); err != nil {
		t.Fatalf("input: %v", err)
	}
	if err := json.Unmarshal(got.Content, &after); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	if cfg, ok := after["config"].(map[string]any); ok {
		if mt, had := before["config"].(map[string]any)["mediaType"]; had {
			cfg["mediaType"] = mt
		} else {
			delete(cfg, "mediaType")
		}
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("something other than config.mediaType changed:\n%s\n%s", in, got.Content)
	}
	again, err := NormalizeManifest(ManifestInput{MediaType: mediaType, Manifest: got.Content, Config: config})
	if err != nil {
		t.Fatalf("second pass: %v", err)
	}
	if again.Changed() || !bytes.Equal(again.Content, got.Content) {
		t.Fatalf("second pass changed %+v", again.Changes)
	}
}

func TestIndex(t *testing.T) {
	t.Parallel()
	in := readFile(t, "testdata/index", "list.json")
	const mt = MediaTypeDockerManifestList
	children, err := IndexChildren(mt, in)
	if err != nil || len(children) != 3 {
		t.Fatalf("children: %v %v", children, err)
	}

	t.Run("no child changed", func(t *testing.T) {
		t.Parallel()
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Children: map[digest.Digest]ocispec.Descriptor{children[1].Digest: children[1]}})
		if err != nil {
			t.Fatal(err)
		}
		if got.Changed() || !bytes.Equal(got.Content, in) {
			t.Fatal("index with clean children was not returned byte for byte")
		}
	})
	t.Run("one broken child among clean ones", func(t *testing.T) {
		t.Parallel()
		fixed := ocispec.Descriptor{MediaType: children[1].MediaType, Digest: digest.FromString("normalized child"), Size: 777}
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Children: map[digest.Digest]ocispec.Descriptor{children[1].Digest: fixed}})
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "testdata/index/want.json", got.Content)
		if want := []Change{{Kind: KindChildManifest, Path: "manifests[1]", Old: children[1].Digest.String(), New: fixed.Digest.String()}}; !reflect.DeepEqual(got.Changes, want) {
			t.Fatalf("changes = %+v, want %+v", got.Changes, want)
		}
		var before, after ocispec.Index
		json.Unmarshal(in, &before)
		json.Unmarshal(got.Content, &after)
		before.Manifests[1].Digest, before.Manifests[1].Size = fixed.Digest, fixed.Size
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("more than the child's digest and size changed:\n%s", got.Content)
		}
		if got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("digest does not verify")
		}
		again, err := NormalizeIndex(IndexInput{MediaType: mt, Index: got.Content, Children: map[digest.Digest]ocispec.Descriptor{children[1].Digest: fixed}})
		if err != nil || again.Changed() {
			t.Fatalf("second pass: %v %+v", err, again.Changes)
		}
	})
}

// TestIndexAttestationReference: in an index as buildkit writes it (two
// platforms, each with its attestation manifest), when the amd64 child is
// rewritten, its attestation manifest's vnd.docker.reference.digest names
// the rewritten child; the arm64 one, whose child is kept, is untouched, and
// so are both attestation manifests' own digests. The same input makes the
// same bytes, and a second pass changes nothing.
func TestIndexAttestationReference(t *testing.T) {
	t.Parallel()
	in := readFile(t, "testdata/index", "buildkit.json")
	mt := ocispec.MediaTypeImageIndex
	children, err := IndexChildren(mt, in)
	if err != nil || len(children) != 4 {
		t.Fatalf("children: %v %v", children, err)
	}
	amd64 := children[0]
	fixed := ocispec.Descriptor{MediaType: amd64.MediaType, Digest: digest.FromString("normalized amd64"), Size: 1200}
	next := map[digest.Digest]ocispec.Descriptor{amd64.Digest: fixed}
	got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Children: next})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/index/buildkit-want.json", got.Content)
	const ref = AnnotationDockerReferenceDigest
	want := []Change{
		{Kind: KindChildManifest, Path: "manifests[0]", Old: amd64.Digest.String(), New: fixed.Digest.String()},
		{Kind: KindChildManifest, Path: "manifests[2].annotations." + ref, Old: amd64.Digest.String(), New: fixed.Digest.String()},
	}
	if !reflect.DeepEqual(got.Changes, want) {
		t.Fatalf("changes = %+v, want %+v", got.Changes, want)
	}
	var before, after ocispec.Index
	json.Unmarshal(in, &before)
	json.Unmarshal(got.Content, &after)
	if after.Manifests[2].Annotations[ref] != fixed.Digest.String() {
		t.Fatalf("the amd64 attestation names %s, want the rewritten child %s", after.Manifests[2].Annotations[ref], fixed.Digest)
	}
	before.Manifests[0].Digest, before.Manifests[0].Size = fixed.Digest, fixed.Size
	before.Manifests[2].Annotations[ref] = fixed.Digest.String()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("more than the child and its attestation's reference changed:\n%s", got.Content)
	}
	again, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Children: next})
	if err != nil || !bytes.Equal(again.Content, got.Content) || again.Digest != got.Digest {
		t.Fatalf("the same input made other bytes: %v\n%s", err, again.Content)
	}
	second, err := NormalizeIndex(IndexInput{MediaType: mt, Index: got.Content, Children: map[digest.Digest]ocispec.Descriptor{fixed.Digest: fixed}})
	if err != nil || second.Changed() {
		t.Fatalf("second pass: %v %+v", err, second.Changes)
	}
}

// indexSizesCase reads testdata/index/sizes: an index whose entries name
// real children (child-N.json) with wrong sizes.
func indexSizesCase(t *testing.T) (index []byte, fetched map[digest.Digest][]byte) {
	t.Helper()
	const dir = "testdata/index/sizes"
	fetched = map[digest.Digest][]byte{}
	for i := 0; ; i++ {
		b := readFile(t, dir, fmt.Sprintf("child-%d.json", i))
		if b == nil {
			break
		}
		fetched[digest.FromBytes(b)] = b
	}
	return readFile(t, dir, "index.json"), fetched
}

// sizesOf is the Sizes of fetched children, each checked by VerifiedSize.
func sizesOf(t testing.TB, fetched map[digest.Digest][]byte) map[digest.Digest]int64 {
	t.Helper()
	sizes := map[digest.Digest]int64{}
	for d, b := range fetched {
		size, err := VerifiedSize(d, b)
		if err != nil {
			t.Fatal(err)
		}
		sizes[d] = size
	}
	return sizes
}

// TestIndexSizes: an entry of the wrong size gets the size of the child it
// names, as fetched; an entry whose child was not fetched, or whose size is
// right, stays; nothing else changes (golden); and bytes that are not the
// child the entry names are an error, never a size.
func TestIndexSizes(t *testing.T) {
	t.Parallel()
	in, fetched := indexSizesCase(t)
	const mt = ocispec.MediaTypeImageIndex
	children, err := IndexChildren(mt, in)
	if err != nil || len(children) != 3 || len(fetched) != 2 {
		t.Fatalf("case: %d children, %d fetched, %v", len(children), len(fetched), err)
	}

	t.Run("wrong sizes", func(t *testing.T) {
		t.Parallel()
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Sizes: sizesOf(t, fetched), FixSizes: true})
		if err != nil {
			t.Fatal(err)
		}
		changes, _ := json.MarshalIndent(got.Changes, "", "  ")
		golden(t, "testdata/index/sizes/want.json", got.Content)
		golden(t, "testdata/index/sizes/changes.json", append(changes, '\n'))
		want := []Change{{Kind: KindIndexSize, Path: "manifests[0].size", Old: strconv.FormatInt(children[0].Size, 10),
			New: strconv.Itoa(len(fetched[children[0].Digest]))}}
		if !reflect.DeepEqual(got.Changes, want) {
			t.Fatalf("changes = %+v, want %+v", got.Changes, want)
		}
		var before, after ocispec.Index
		json.Unmarshal(in, &before)
		json.Unmarshal(got.Content, &after)
		before.Manifests[0].Size = int64(len(fetched[children[0].Digest]))
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("more than the entry's size changed:\n%s", got.Content)
		}
		if got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("digest does not verify")
		}
		again, err := NormalizeIndex(IndexInput{MediaType: mt, Index: got.Content, Sizes: sizesOf(t, fetched), FixSizes: true})
		if err != nil || again.Changed() || !bytes.Equal(again.Content, got.Content) {
			t.Fatalf("second pass: %v %+v", err, again.Changes)
		}
	})
	t.Run("rule off", func(t *testing.T) {
		t.Parallel()
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Sizes: sizesOf(t, fetched)})
		if err != nil || got.Changed() || !bytes.Equal(got.Content, in) {
			t.Fatalf("without the rule: %v %+v", err, got.Changes)
		}
	})
	t.Run("a child that is not the one named", func(t *testing.T) {
		t.Parallel()
		if _, err := VerifiedSize(children[0].Digest, fetched[children[1].Digest]); !errors.Is(err, ErrChildMismatch) {
			t.Fatalf("got %v, want ErrChildMismatch", err)
		}
		if size, err := VerifiedSize(children[0].Digest, fetched[children[0].Digest]); err != nil || size != int64(len(fetched[children[0].Digest])) {
			t.Fatalf("the child itself: %d, %v", size, err)
		}
	})
	t.Run("a normalized child brings its own size", func(t *testing.T) {
		t.Parallel()
		fixed := ocispec.Descriptor{MediaType: children[0].MediaType, Digest: digest.FromString("normalized child"), Size: 777}
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: in, Sizes: sizesOf(t, fetched), FixSizes: true,
			Children: map[digest.Digest]ocispec.Descriptor{children[0].Digest: fixed}})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Changes) != 1 || got.Changes[0].Kind != KindChildManifest {
			t.Fatalf("changes = %+v, want the child-manifest change alone", got.Changes)
		}
	})
}

func TestRejectsAmbiguousOrForeignInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, mediaType, doc string
	}{
		{"duplicate config key", MediaTypeDockerManifest, `{"schemaVersion":2,"config":{"mediaType":"application/octet-stream","mediaType":"x","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1},"layers":[]}`},
		{"duplicate top-level key", MediaTypeDockerManifest, `{"schemaVersion":2,"schemaVersion":2,"layers":[]}`},
		{"not JSON", MediaTypeDockerManifest, `{"schemaVersion":2,`},
		{"schema 1", MediaTypeDockerManifest, `{"schemaVersion":1}`},
		{"index as manifest", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[]}`},
		{"NUL in key", MediaTypeDockerManifest, `{"schemaVersion":2,"config\u0000mediaType":"application/octet-stream"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NormalizeManifest(ManifestInput{MediaType: tt.mediaType, Manifest: []byte(tt.doc)}); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestConfigMustMatchItsDescriptor(t *testing.T) {
	t.Parallel()
	dir := "testdata/manifest/docker-octet-stream"
	in := readFile(t, dir, "manifest.json")
	if _, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: []byte(`{"rootfs":{"type":"layers","diff_ids":["a","b"]}}`)}); err == nil {
		t.Fatal("a config that does not match the descriptor was used")
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./rewrite -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs:\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestManifestWithRepackagedLayer(t *testing.T) {
	t.Parallel()
	dir := "testdata/manifest/docker-octet-stream"
	in, config := readFile(t, dir, "manifest.json"), readFile(t, dir, "config.json")
	plan, err := PlanManifest(MediaTypeDockerManifest, in)
	if err != nil {
		t.Fatal(err)
	}
	fix := LayerResult{
		LayerScan: LayerScan{Removals: []XattrRemoval{{Path: "etc/link", Keys: []string{"SCHILY.xattr.user.a"}}}},
		Digest:    digest.FromString("repacked layer"), Size: 4242, DiffID: digest.FromString("repacked diff"),
	}
	layers := map[digest.Digest]LayerResult{plan.Layers[1].Digest: fix}
	got, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: config, Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Changes) != 2 || got.Changes[1].Kind != KindSymlinkXattrs || got.Changes[1].Path != "layers[1]" ||
		got.Changes[1].Details[0] != "etc/link: SCHILY.xattr.user.a" {
		t.Fatalf("changes: %+v", got.Changes)
	}
	// The config changed only in diff_ids[1].
	var before, after map[string]any
	json.Unmarshal(config, &before)
	json.Unmarshal(got.Config, &after)
	before["rootfs"].(map[string]any)["diff_ids"].([]any)[1] = fix.DiffID.String()
	if !reflect.DeepEqual(before, after) || got.ConfigDesc.Digest != digest.FromBytes(got.Config) {
		t.Fatalf("config:\n%s", got.Config)
	}
	// The manifest changed only in the config descriptor and layer 1.
	var m ocispec.Manifest
	json.Unmarshal(got.Content, &m)
	if m.Config.Digest != got.ConfigDesc.Digest || m.Config.Size != got.ConfigDesc.Size || m.Config.MediaType != MediaTypeDockerConfig ||
		m.Layers[1].Digest != fix.Digest || m.Layers[1].Size != fix.Size || m.Layers[0].Digest != plan.Layers[0].Digest {
		t.Fatalf("manifest:\n%s", got.Content)
	}
	again, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: got.Content, Config: got.Config, Layers: layers})
	if err != nil || again.Changed() {
		t.Fatalf("second pass: %v %+v", err, again.Changes)
	}
	// A repackaged layer needs a config with matching diff_ids.
	if _, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: nil, Layers: layers}); err == nil {
		t.Fatal("layer fix without a config accepted")
	}
}

// TestIndexChildrenPlatforms: a child's platform and Docker reference type
// are read, so that only the children that matter are fetched.
func TestIndexChildrenPlatforms(t *testing.T) {
	t.Parallel()
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	index := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
		{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":1,"platform":{"os":"unknown","architecture":"unknown"},
		 "annotations":{"vnd.docker.reference.type":"attestation-manifest","other":"x"}},
		{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"` + d + `","size":1}]}`
	children, err := IndexChildren("application/vnd.oci.image.index.v1+json", []byte(index))
	if err != nil || len(children) != 3 {
		t.Fatalf("%+v, %v", children, err)
	}
	if p := children[0].Platform; p == nil || p.OS != "linux" || p.Architecture != "arm" || p.Variant != "v7" {
		t.Errorf("platform: %+v", p)
	}
	if a := children[1].Annotations; len(a) != 1 || a[AnnotationDockerReferenceType] != "attestation-manifest" {
		t.Errorf("annotations: %v", a)
	}
	if children[2].Platform != nil || children[2].Annotations != nil {
		t.Errorf("a child without platform: %+v", children[2])
	}
}

// TestJSONIndexIsBounded: the index of a document is bounded whatever the
// document: tiny values under a long key, very many values, or deep nesting
// took memory in proportion to values times key or depth squared (gigabytes
// from kilobytes). A manifest with a long annotation key still plans. Not
// parallel: it measures the process's allocations.
func TestJSONIndexIsBounded(t *testing.T) {
	const limit = 64 << 20
	for _, tc := range []struct {
		name    string
		doc     string
		invalid bool // refused as invalid JSON rather than indexed in part
	}{
		{"long key over many values", `{"` + strings.Repeat("k", 20<<10) + `":[` + strings.Repeat("1,", 100000) + `1]}`, false},
		{"many values", `{"a":[` + strings.Repeat("1,", 1<<17) + `1]}`, true},
		{"deep nesting", `{"a":` + strings.Repeat("[", 9990) + strings.Repeat("]", 9990) + `}`, false},
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := parseDoc([]byte(tc.doc))
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
			t.Errorf("%s (%d bytes): allocated %d MB", tc.name, len(tc.doc), alloc>>20)
		}
		if got := errors.Is(err, ErrInvalidJSON); got != tc.invalid {
			t.Errorf("%s: refused %v (%v), want %v", tc.name, got, err, tc.invalid)
		}
	}

	config := []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`)
	manifest := `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",` +
		`"config":{"mediaType":"application/octet-stream","digest":"` + digest.FromBytes(config).String() + `","size":` + strconv.Itoa(len(config)) + `},` +
		`"layers":[],"annotations":{"` + strings.Repeat("a", 1000) + `":"x"}}`
	if plan, err := PlanManifest(MediaTypeDockerManifest, []byte(manifest)); err != nil || !plan.ConfigMediaTypeSuspect {
		t.Fatalf("a manifest with a long annotation key: %+v, %v", plan, err)
	}
}

// TestZstdMediaType: Docker's zstd layer type becomes OCI's, in place, and
// nothing else changes: not the other layers, not a byte of the layout.
func TestZstdMediaType(t *testing.T) {
	t.Parallel()
	layer := func(mt string, n int) string {
		return fmt.Sprintf(`{"mediaType": %q, "size": %d, "digest": "%s"}`, mt, n, digest.FromString(strconv.Itoa(n)))
	}
	in := []byte(`{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7, "digest": "` + digest.FromString("config").String() + `"},
   "layers": [
      ` + layer(MediaTypeDockerLayerZstd, 1) + `,
      ` + layer(MediaTypeDockerLayerGzip, 2) + `,
      ` + layer(MediaTypeDockerLayerZstd, 3) + `
   ]
}`)
	off, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, KeepConfigMediaType: true})
	if err != nil || off.Changed() || !bytes.Equal(off.Content, in) {
		t.Fatalf("rule off: %+v, %v; want the input", off.Changes, err)
	}
	got, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, RetypeDockerZstd: true})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.ReplaceAll(in, []byte(`"`+MediaTypeDockerLayerZstd+`"`), []byte(`"`+ocispec.MediaTypeImageLayerZstd+`"`))
	if !bytes.Equal(got.Content, want) || got.Digest != digest.FromBytes(want) || got.MediaType != MediaTypeDockerManifest {
		t.Fatalf("got %s (%s)\nwant %s", got.Content, got.Digest, want)
	}
	if len(got.Changes) != 2 || got.Changes[0].Path != "layers[0].mediaType" || got.Changes[1].Path != "layers[2].mediaType" ||
		got.Changes[0].Kind != KindZstdMediaType || got.Changes[0].New != ocispec.MediaTypeImageLayerZstd {
		t.Fatalf("changes %+v", got.Changes)
	}
	again, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: got.Content, RetypeDockerZstd: true})
	if err != nil || again.Changed() {
		t.Fatalf("second pass: %+v, %v", again.Changes, err)
	}
}

// A layer recompressed byte for byte must be the tar its config names: a
// mismatch is the upstream's broken image, refused rather than mended.
func TestRecompressedLayerKeepsItsDiffID(t *testing.T) {
	t.Parallel()
	in := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":0,"digest":"CFG"},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","size":1,"digest":"` + digest.FromString("l").String() + `"}]}`)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + digest.FromString("tar").String() + `"]}}`)
	in = bytes.Replace(in, []byte(`"size":0,"digest":"CFG"`), []byte(`"size":`+strconv.Itoa(len(config))+`,"digest":"`+digest.FromBytes(config).String()+`"`), 1)
	fix := func(diffID digest.Digest) map[digest.Digest]LayerResult {
		return map[digest.Digest]LayerResult{digest.FromString("l"): {Digest: digest.FromString("gz"), Size: 2, DiffID: diffID, MediaType: ocispec.MediaTypeImageLayerGzip}}
	}
	res, err := NormalizeManifest(ManifestInput{MediaType: ocispec.MediaTypeImageManifest, Manifest: in, Config: config, Layers: fix(digest.FromString("tar"))})
	if err != nil || res.Config != nil || len(res.Changes) != 1 || res.Changes[0].Kind != KindZstdGzip {
		t.Fatalf("same tar: config %s, changes %+v, %v", res.Config, res.Changes, err)
	}
	if _, err := NormalizeManifest(ManifestInput{MediaType: ocispec.MediaTypeImageManifest, Manifest: in, Config: config, Layers: fix(digest.FromString("other"))}); !errors.Is(err, ErrNotImage) {
		t.Fatalf("another tar: %v", err)
	}
}
