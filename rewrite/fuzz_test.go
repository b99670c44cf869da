package rewrite

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
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
	f.Fuzz(func(t *testing.T, blob []byte) {
		if len(blob) > 64<<10 {
			return // bounded: gzip can expand a large input a thousandfold
		}
		scan, err := ScanLayer(bytes.NewReader(blob), 0)
		if err != nil {
			return
		}
		var out bytes.Buffer
		res, err := RepackLayer(&out, bytes.NewReader(blob), 0)
		if err != nil {
			return // the Go tar writer refuses some headers its reader accepts
		}
		if res.Entries != scan.Entries || len(res.Removals) != len(scan.Removals) {
			t.Fatalf("scan %+v, repack %+v", scan, res.LayerScan)
		}
		if res.Digest != digest.FromBytes(out.Bytes()) || res.Size != int64(out.Len()) {
			t.Fatal("digest does not verify")
		}
		again, err := ScanLayer(bytes.NewReader(out.Bytes()), 0)
		if err != nil || !again.Clean() || again.Entries != scan.Entries {
			t.Fatalf("second pass: %+v %v", again, err)
		}
	})
}
