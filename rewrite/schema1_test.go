package rewrite

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/schema1"
)

// signPretty frames payload (indented JSON ending in "\n}") as libtrust's
// "pretty" JWS does: the signatures are spliced in before the final brace,
// and each protected header says how to cut them out again. The signature
// bytes are not a real signature: nothing in regnorm checks them.
func signPretty(payload []byte, sigs int) []byte {
	formatLength := bytes.LastIndex(payload, []byte("\n}"))
	tail := base64.RawURLEncoding.EncodeToString(payload[formatLength:])
	var entries []string
	for i := range sigs {
		protected := base64.RawURLEncoding.EncodeToString([]byte(`{"formatLength":` + itoa(formatLength) + `,"formatTail":"` + tail + `","time":"2016-01-0` + itoa(i+1) + `T00:00:00Z"}`))
		entries = append(entries, `      {
         "header": {"alg": "ES256"},
         "signature": "c2lnbmF0dXJl",
         "protected": "`+protected+`"
      }`)
	}
	return append(append(bytes.Clone(payload[:formatLength]), []byte(",\n   \"signatures\": [\n"+strings.Join(entries, ",\n")+"\n   ]")...), "\n}"...)
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// gzipTar is a layer, gzipped with the pinned library (the standard
// library's output may change with Go, and the digests are golden).
func gzipTar(t *testing.T, files map[string]string) (blob []byte, diffID digest.Digest) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, name := range []string{"a", "b", "c"} {
		if content, ok := files[name]; ok {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
			tw.Write([]byte(content))
		}
	}
	tw.Close()
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	zw.Write(tb.Bytes())
	zw.Close()
	return gb.Bytes(), digest.FromBytes(tb.Bytes())
}

// schema1Fixture is a three-entry schema 1 image, newest first as schema 1
// has it: a layer, a throwaway (an ENV), the base layer.
func schema1Fixture(t *testing.T) (payload []byte, blobs map[digest.Digest]Schema1Blob, base, top []byte) {
	t.Helper()
	base, baseDiff := gzipTar(t, map[string]string{"a": "base\n"})
	top, topDiff := gzipTar(t, map[string]string{"b": "top\n"})
	empty := digest.Digest("sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4")
	v1 := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	payload = []byte(`{
   "schemaVersion": 1,
   "name": "library/old",
   "tag": "v1",
   "architecture": "amd64",
   "fsLayers": [
      {"blobSum": "` + digest.FromBytes(top).String() + `"},
      {"blobSum": "` + empty.String() + `"},
      {"blobSum": "` + digest.FromBytes(base).String() + `"}
   ],
   "history": [
      {"v1Compatibility": ` + v1(`{"architecture":"amd64","config":{"Cmd":["/hello"],"Env":["A=1"]},"container_config":{"Cmd":["/bin/sh","-c","#(nop) COPY file:b in /"]},"created":"2016-01-03T00:00:00.123456789Z","docker_version":"1.9.1","id":"3333333333333333333333333333333333333333333333333333333333333333","os":"linux","parent":"2222222222222222222222222222222222222222222222222222222222222222","Size":4}`) + `},
      {"v1Compatibility": ` + v1(`{"id":"2222222222222222222222222222222222222222222222222222222222222222","parent":"1111111111111111111111111111111111111111111111111111111111111111","created":"2016-01-02T00:00:00Z","container_config":{"Cmd":["/bin/sh","-c","#(nop) ENV A=1"]},"throwaway":true}`) + `},
      {"v1Compatibility": ` + v1(`{"id":"1111111111111111111111111111111111111111111111111111111111111111","created":"2016-01-01T00:00:00Z","author":"someone","comment":"base","container_config":{"Cmd":["/bin/sh","-c","#(nop) ADD file:a in /"]}}`) + `}
   ]
}`)
	blobs = map[digest.Digest]Schema1Blob{
		digest.FromBytes(base): {Size: int64(len(base)), DiffID: baseDiff, Compression: Gzip},
		digest.FromBytes(top):  {Size: int64(len(top)), DiffID: topDiff, Compression: Gzip},
	}
	return payload, blobs, base, top
}

// ConvertSchema1 makes a Docker schema 2 image as containerd 1.x would:
// oldest first, the throwaway layer only in the history, the newest
// v1Compatibility without its bookkeeping as the config. The bytes are the
// golden ones: every replica computes these digests.
func TestConvertSchema1(t *testing.T) {
	t.Parallel()
	payload, blobs, base, top := schema1Fixture(t)
	res, err := ConvertSchema1(schema1.MediaTypeSigned, signPretty(payload, 1), blobs)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := ConvertSchema1(schema1.MediaTypeUnsigned, payload, blobs)
	if !bytes.Equal(again.Content, res.Content) || !bytes.Equal(again.Config, res.Config) {
		t.Fatal("signed and unsigned forms of one payload convert differently")
	}
	golden(t, "testdata/schema1/manifest.json", res.Content)
	golden(t, "testdata/schema1/config.json", res.Config)
	if res.MediaType != MediaTypeDockerManifest || res.Digest != digest.FromBytes(res.Content) || res.ConfigDesc.Digest != digest.FromBytes(res.Config) {
		t.Fatalf("result %s %s, config %s", res.MediaType, res.Digest, res.ConfigDesc.Digest)
	}

	var m ocispec.Manifest
	if err := json.Unmarshal(res.Content, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 2 || m.Layers[0].Digest != digest.FromBytes(base) || m.Layers[1].Digest != digest.FromBytes(top) ||
		m.Layers[0].MediaType != MediaTypeDockerLayerGzip || m.Layers[1].Size != int64(len(top)) || m.Config.MediaType != MediaTypeDockerConfig {
		t.Fatalf("manifest %s", res.Content)
	}
	var cfg map[string]json.RawMessage
	json.Unmarshal(res.Config, &cfg)
	for _, k := range []string{"id", "parent", "throwaway", "Size"} {
		if _, ok := cfg[k]; ok {
			t.Errorf("config keeps the v1 field %q", k)
		}
	}
	var img ocispec.Image
	json.Unmarshal(res.Config, &img)
	if len(img.RootFS.DiffIDs) != 2 || img.RootFS.DiffIDs[0] != blobs[digest.FromBytes(base)].DiffID || len(img.History) != 3 ||
		!img.History[1].EmptyLayer || img.History[0].Author != "someone" || img.History[2].CreatedBy != "/bin/sh -c #(nop) COPY file:b in /" ||
		len(img.Config.Cmd) != 1 || img.Config.Cmd[0] != "/hello" {
		t.Fatalf("config %s", res.Config)
	}
	if _, err := ConvertSchema1(schema1.MediaTypeSigned, signPretty(payload, 1), map[digest.Digest]Schema1Blob{}); err == nil {
		t.Fatal("converted without the layers' diff IDs")
	}
	short := bytes.Replace(payload, []byte(`"fsLayers": [`), []byte(`"fsLayers": [{"blobSum": "`+digest.FromString("x").String()+`"},`), 1)
	if _, err := PlanSchema1(short); !errors.Is(err, ErrBadSchema1) {
		t.Fatalf("fsLayers and history of different lengths: %v", err)
	}
	for _, good := range []string{"2016-02-29T00:00:00Z", "2016-01-01T00:00:00.123456789+00:00", "0001-01-01T00:00:00Z", "2016-01-01T10:00:00-07:00"} {
		if _, err := PlanSchema1(bytes.Replace(payload, []byte("2016-01-01T00:00:00Z"), []byte(good), 1)); err != nil {
			t.Fatalf("created %q: %v", good, err)
		}
	}
	// A created time containerd could not read would make a config it
	// cannot decode: refused (served unconverted) instead.
	for _, bad := range []string{"yesterday", "2016-13-45T25:61:61+99:99", "2016-02-30T00:00:00Z", "2015-02-29T00:00:00Z", "2016-01-01T00:00:60Z"} {
		if _, err := PlanSchema1(bytes.Replace(payload, []byte("2016-01-01T00:00:00Z"), []byte(bad), 1)); !errors.Is(err, ErrBadSchema1) {
			t.Fatalf("created %q: %v", bad, err)
		}
	}
}

// LayerDiffID is the digest of the decompressed stream, and a source that
// fails is an error, never a diff ID.
func TestLayerDiffID(t *testing.T) {
	t.Parallel()
	blob, want := gzipTar(t, map[string]string{"a": strings.Repeat("x", 100000)})
	if got, comp, err := LayerDiffID(bytes.NewReader(blob), Limits{}); err != nil || got != want || comp != Gzip {
		t.Fatalf("gzip: %s %s %v; want %s", got, comp, err, want)
	}
	cut := io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, _, err := LayerDiffID(cut, Limits{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a source cut short: %v", err)
	}
	if _, _, err := LayerDiffID(bytes.NewReader(blob), Limits{Size: 1000}); !errors.Is(err, ErrLayerTooLarge) {
		t.Fatalf("beyond the limit: %v", err)
	}
}
