package rewrite

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzNormalizeManifest: whatever the input, a result that comes back is
// valid JSON whose digest verifies, differs from the input only in the config
// media type, and does not change on a second pass.
func FuzzNormalizeManifest(f *testing.F) {
	dirs, _ := filepath.Glob("testdata/manifest/*")
	for _, dir := range dirs {
		mt, _ := os.ReadFile(filepath.Join(dir, "mediatype"))
		m, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
		c, _ := os.ReadFile(filepath.Join(dir, "config.json"))
		f.Add(strings.TrimSpace(string(mt)) == MediaTypeDockerManifest, m, c)
	}
	f.Fuzz(func(t *testing.T, docker bool, manifest, config []byte) {
		mt := "application/vnd.oci.image.manifest.v1+json"
		if docker {
			mt = MediaTypeDockerManifest
		}
		plan, err := PlanManifest(mt, manifest)
		if err != nil {
			return
		}
		if !plan.ConfigMediaTypeSuspect {
			config = nil
		}
		got, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: manifest, Config: config})
		if err != nil {
			return
		}
		if !got.Changed() && !bytes.Equal(got.Content, manifest) {
			t.Fatal("unchanged result is not the input")
		}
		checkManifestProperties(t, mt, manifest, config, got)
	})
}

// FuzzJSONDoc: every value the scanner records is valid JSON on its own, and
// splicing each value with itself gives back the document.
func FuzzJSONDoc(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*/*.json")
	more, _ := filepath.Glob("testdata/*/*.json")
	for _, file := range append(files, more...) {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"a":[1,{"b":"\"}"}],"c":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := parseDoc(data)
		if err != nil {
			return
		}
		var edits []edit
		for key, sp := range doc.spans {
			v := data[sp.start:sp.end]
			if !json.Valid(v) {
				t.Fatalf("value at %q is not JSON: %q", key, v)
			}
			if key != "" {
				edits = append(edits, edit{path: strings.Split(key, "\x00"), value: v})
			}
		}
		// Only leaves: nested spans overlap their parents.
		var leaves []edit
		for _, e := range edits {
			if v := e.value; v[0] != '{' && v[0] != '[' {
				leaves = append(leaves, e)
			}
		}
		out, err := doc.splice(leaves)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, data) {
			t.Fatal("identity splice changed the document")
		}
	})
}

// FuzzRepackLayer: a layer the scanner accepts repackages into a valid tar
// whose digests verify, with the same number of entries, and a second scan
// finds nothing to strip.
func FuzzRepackLayer(f *testing.F) {
	for _, c := range layerCases {
		raw := buildTar(f, c.entries, c.format)
		f.Add(raw)
		f.Add(compress(f, raw, Gzip))
	}
	f.Add(sparseLayer(f))
	f.Add(compress(f, sparseLayer(f), Gzip))
	f.Fuzz(func(t *testing.T, blob []byte) {
		if len(blob) > 64<<10 {
			return // bounded: gzip can expand a large input a thousandfold
		}
		// A source that ends in an error is never a layer, whatever it
		// held before (a body cut short).
		cut := io.MultiReader(bytes.NewReader(blob), iotest.ErrReader(io.ErrUnexpectedEOF))
		if scan, err := ScanLayer(cut, Limits{}); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("a source cut short scanned as %+v, %v", scan, err)
		}
		scan, err := ScanLayer(bytes.NewReader(blob), Limits{})
		if err != nil {
			return
		}
		// The standard library's reader is the oracle for the count.
		if !bytes.HasPrefix(blob, zstdMagic) {
			if want := stdlibEntries(t, blob); want >= 0 && want != scan.Entries {
				t.Fatalf("scan counts %d entries, the standard library %d", scan.Entries, want)
			}
		}
		// A sparse entry of a few bytes may declare a terabyte: what is
		// written is bounded, as the engine bounds it.
		lim := Limits{Size: 64 << 20}
		var out bytes.Buffer
		res, err := RepackLayer(&out, bytes.NewReader(blob), lim)
		if err != nil {
			return // the Go tar writer refuses some headers its reader accepts
		}
		if res.Entries != scan.Entries || len(res.Removals) != len(scan.Removals) || res.Sparse != scan.Sparse || len(res.Expanded) != len(scan.Expanded) {
			t.Fatalf("scan %+v, repack %+v", scan, res.LayerScan)
		}
		if res.Digest != digest.FromBytes(out.Bytes()) || res.Size != int64(out.Len()) {
			t.Fatal("digest does not verify")
		}
		again, err := ScanLayer(bytes.NewReader(out.Bytes()), Limits{})
		if err != nil || !again.Clean() || again.Entries != scan.Entries {
			t.Fatalf("second pass: %+v %v", again, err)
		}
		// The sparse rule alone: sparse entries become regular files of
		// the content the reader gives, xattrs stay, nothing else changes.
		if scan.Sparse == 0 {
			return
		}
		out.Reset()
		res, err = TransformLayer(&out, bytes.NewReader(blob), lim, LayerTransform{Expand: true})
		if errors.Is(err, ErrLayerTooLarge) {
			return // keeping the xattrs stripping removed, at the bound
		}
		if err != nil {
			t.Fatalf("expanding a layer that repackaged: %v", err)
		}
		if res.Digest != digest.FromBytes(out.Bytes()) || res.Size != int64(out.Len()) {
			t.Fatalf("expanded result %s (%d bytes) is not what was written", res.Digest, res.Size)
		}
		again, err = ScanLayer(bytes.NewReader(out.Bytes()), Limits{})
		if err != nil || again.Sparse != 0 || again.Stripped != scan.Stripped || again.Entries != scan.Entries || res.Sparse != scan.Sparse {
			t.Fatalf("second pass after expanding: %+v %v", again, err)
		}
		before, after := readEntries(t, decompress(t, blob)), readEntries(t, decompress(t, out.Bytes()))
		for i := range before {
			b, a := before[i], after[i]
			if b.hdr.Name != a.hdr.Name || b.body != a.body || a.hdr.Size != int64(len(a.body)) ||
				(b.hdr.Typeflag != a.hdr.Typeflag && (b.hdr.Typeflag != tar.TypeGNUSparse || a.hdr.Typeflag != tar.TypeReg)) {
				t.Fatalf("entry %d: %+v became %+v", i, b.hdr, a.hdr)
			}
		}
	})
}

// FuzzNormalizeIndex: pointing children at new manifests changes exactly
// their digest and size (and the reference of an entry naming one), the
// result's digest verifies, and applying the
// same replacements again changes nothing.
func FuzzNormalizeIndex(f *testing.F) {
	files, _ := filepath.Glob("testdata/index/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b, uint8(1))
	}
	f.Fuzz(func(t *testing.T, index []byte, salt uint8) {
		const mt = MediaTypeDockerManifestList
		children, err := IndexChildren(mt, index)
		if err != nil {
			return
		}
		next := map[digest.Digest]ocispec.Descriptor{}
		for i, c := range children {
			if (i+int(salt))%2 == 0 {
				next[c.Digest] = ocispec.Descriptor{Digest: digest.FromString(c.Digest.String() + string(rune(salt))), Size: c.Size + 1}
			}
		}
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: index, Children: next})
		if err != nil {
			return
		}
		if got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("digest does not verify")
		}
		var before, after struct {
			Manifests []map[string]any `json:"manifests"`
		}
		var beforeAll, afterAll map[string]any
		if json.Unmarshal(index, &before) != nil || json.Unmarshal(got.Content, &after) != nil ||
			json.Unmarshal(index, &beforeAll) != nil || json.Unmarshal(got.Content, &afterAll) != nil {
			t.Fatal("output or input is not a JSON object")
		}
		delete(beforeAll, "manifests")
		delete(afterAll, "manifests")
		if !reflect.DeepEqual(beforeAll, afterAll) || len(before.Manifests) != len(after.Manifests) {
			t.Fatalf("more than the children changed:\n%s\n%s", index, got.Content)
		}
		for i := range before.Manifests {
			// An entry naming a rewritten child (an attestation manifest)
			// names the rewritten child.
			if ann, ok := before.Manifests[i]["annotations"].(map[string]any); ok {
				if ref, ok := ann[AnnotationDockerReferenceDigest].(string); ok {
					if n, ok := next[digest.Digest(ref)]; ok {
						afterAnn, _ := after.Manifests[i]["annotations"].(map[string]any)
						if afterAnn == nil || afterAnn[AnnotationDockerReferenceDigest] != n.Digest.String() {
							t.Fatalf("child %d: reference %v, want %s", i, afterAnn, n.Digest)
						}
						afterAnn[AnnotationDockerReferenceDigest] = ref
					}
				}
			}
			if n, ok := next[children[i].Digest]; ok {
				if after.Manifests[i]["digest"] != n.Digest.String() {
					t.Fatalf("child %d: digest %v, want %s", i, after.Manifests[i]["digest"], n.Digest)
				}
				delete(before.Manifests[i], "digest")
				delete(before.Manifests[i], "size")
				delete(after.Manifests[i], "digest")
				delete(after.Manifests[i], "size")
			}
			if !reflect.DeepEqual(before.Manifests[i], after.Manifests[i]) {
				t.Fatalf("child %d: more than digest and size changed", i)
			}
		}
		identity := map[digest.Digest]ocispec.Descriptor{}
		for _, n := range next {
			identity[n.Digest] = n
		}
		again, err := NormalizeIndex(IndexInput{MediaType: mt, Index: got.Content, Children: identity})
		if err != nil || again.Changed() || !bytes.Equal(again.Content, got.Content) {
			t.Fatalf("second pass: %v %+v", err, again.Changes)
		}
	})
}

// FuzzIndexSizes: with the index sizes rule, every entry that names the
// fetched child has its size and nothing else changes; the digest verifies;
// a second pass changes nothing; and the child filed under another digest
// is never taken for it.
func FuzzIndexSizes(f *testing.F) {
	index, _ := os.ReadFile("testdata/index/sizes/index.json")
	for _, name := range []string{"child-0.json", "child-1.json"} {
		child, _ := os.ReadFile(filepath.Join("testdata/index/sizes", name))
		f.Add(index, child)
	}
	f.Fuzz(func(t *testing.T, index, child []byte) {
		const mt = ocispec.MediaTypeImageIndex
		children, err := IndexChildren(mt, index)
		if err != nil {
			return
		}
		dgst := digest.FromBytes(child)
		sizes := map[digest.Digest]int64{dgst: int64(len(child))}
		got, err := NormalizeIndex(IndexInput{MediaType: mt, Index: index, Sizes: sizes, FixSizes: true})
		if err != nil {
			return
		}
		if got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("digest does not verify")
		}
		var before, after struct {
			Manifests []map[string]any `json:"manifests"`
		}
		if json.Unmarshal(index, &before) != nil || json.Unmarshal(got.Content, &after) != nil || len(before.Manifests) != len(after.Manifests) {
			t.Fatalf("output is not the same index:\n%s\n%s", index, got.Content)
		}
		for i := range before.Manifests {
			if children[i].Digest == dgst {
				if size, _ := after.Manifests[i]["size"].(float64); size != float64(len(child)) {
					t.Fatalf("entry %d: size %v, want %d", i, after.Manifests[i]["size"], len(child))
				}
				delete(before.Manifests[i], "size")
				delete(after.Manifests[i], "size")
			}
			if !reflect.DeepEqual(before.Manifests[i], after.Manifests[i]) {
				t.Fatalf("entry %d: more than its size changed", i)
			}
		}
		again, err := NormalizeIndex(IndexInput{MediaType: mt, Index: got.Content, Sizes: sizes, FixSizes: true})
		if err != nil || again.Changed() || !bytes.Equal(again.Content, got.Content) {
			t.Fatalf("second pass: %v %+v", err, again.Changes)
		}
		for _, c := range children {
			if c.Digest != dgst {
				if _, err := VerifiedSize(c.Digest, child); !errors.Is(err, ErrChildMismatch) {
					t.Fatalf("bytes read for %s were taken for that child: %v", c.Digest, err)
				}
				break
			}
		}
	})
}

// FuzzRewriteConfig: when every layer is repackaged, the config's diff_ids
// become the new ones and nothing else in it changes; the config and
// manifest digests verify; the manifest points at the new config.
func FuzzRewriteConfig(f *testing.F) {
	dirs, _ := filepath.Glob("testdata/manifest/*")
	for _, dir := range dirs {
		m, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
		c, _ := os.ReadFile(filepath.Join(dir, "config.json"))
		f.Add(m, c)
	}
	f.Fuzz(func(t *testing.T, manifest, config []byte) {
		const mt = MediaTypeDockerManifest
		plan, err := PlanManifest(mt, manifest)
		if err != nil || len(plan.Layers) == 0 {
			return
		}
		layers := map[digest.Digest]LayerResult{}
		for _, l := range plan.Layers {
			layers[l.Digest] = LayerResult{Digest: digest.FromString("new " + l.Digest.String()), Size: l.Size + 1,
				DiffID: digest.FromString("diff " + l.Digest.String())}
		}
		got, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: manifest, Config: config, Layers: layers})
		if err != nil {
			return
		}
		if got.Config == nil {
			t.Fatal("layers repackaged but the config is unchanged")
		}
		if got.ConfigDesc.Digest != digest.FromBytes(got.Config) || got.ConfigDesc.Size != int64(len(got.Config)) || got.Digest != digest.FromBytes(got.Content) {
			t.Fatal("a digest does not verify")
		}
		var before, after map[string]any
		if json.Unmarshal(config, &before) != nil || json.Unmarshal(got.Config, &after) != nil {
			t.Fatal("config is not a JSON object")
		}
		diffIDs, _ := after["rootfs"].(map[string]any)["diff_ids"].([]any)
		for i, l := range plan.Layers {
			if i >= len(diffIDs) || diffIDs[i] != layers[l.Digest].DiffID.String() {
				t.Fatalf("diff_ids[%d] = %v, want %s", i, diffIDs, layers[l.Digest].DiffID)
			}
		}
		before["rootfs"].(map[string]any)["diff_ids"] = nil
		after["rootfs"].(map[string]any)["diff_ids"] = nil
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("more than diff_ids changed:\n%s\n%s", config, got.Config)
		}
		newPlan, err := PlanManifest(mt, got.Content)
		if err != nil || newPlan.Config.Digest != got.ConfigDesc.Digest {
			t.Fatalf("manifest does not point at the new config: %v", err)
		}
	})
}
