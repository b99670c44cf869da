package rewrite

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestLayerMediaType: layers declared as OCI's plain tar get the type of
// the compression their blob has (gzip, zstd); a really plain one, and one
// already typed, stay; nothing else changes (golden), and a second pass
// changes nothing. Without the rule, the manifest is returned as it is.
func TestLayerMediaType(t *testing.T) {
	t.Parallel()
	const dir = "testdata/layertype"
	in := readFile(t, dir, "manifest.json")
	var comps map[digest.Digest]Compression
	if err := json.Unmarshal(readFile(t, dir, "compressions.json"), &comps); err != nil {
		t.Fatal(err)
	}
	const mt = ocispec.MediaTypeImageManifest
	got, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: in, Compressions: comps, RetypeCompressedTar: true})
	if err != nil {
		t.Fatal(err)
	}
	changes, _ := json.MarshalIndent(got.Changes, "", "  ")
	golden(t, dir+"/want.json", got.Content)
	golden(t, dir+"/changes.json", append(changes, '\n'))
	want := []Change{
		{Kind: KindLayerMediaType, Path: "layers[0].mediaType", Old: ocispec.MediaTypeImageLayer, New: ocispec.MediaTypeImageLayerGzip},
		{Kind: KindLayerMediaType, Path: "layers[1].mediaType", Old: ocispec.MediaTypeImageLayer, New: ocispec.MediaTypeImageLayerZstd},
	}
	if !reflect.DeepEqual(got.Changes, want) {
		t.Fatalf("changes = %+v, want %+v", got.Changes, want)
	}
	var before, after ocispec.Manifest
	json.Unmarshal(in, &before)
	json.Unmarshal(got.Content, &after)
	before.Layers[0].MediaType, before.Layers[1].MediaType = ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd
	if !reflect.DeepEqual(before, after) || got.Digest != digest.FromBytes(got.Content) {
		t.Fatalf("more than two media types changed, or the digest does not verify:\n%s", got.Content)
	}
	again, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: got.Content, Compressions: comps, RetypeCompressedTar: true})
	if err != nil || again.Changed() || !bytes.Equal(again.Content, got.Content) {
		t.Fatalf("second pass: %v %+v", err, again.Changes)
	}
	off, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: in, Compressions: comps})
	if err != nil || off.Changed() || !bytes.Equal(off.Content, in) {
		t.Fatalf("without the rule: %v %+v", err, off.Changes)
	}
	// Docker's plain type is containerd's to sniff: never retyped.
	docker := bytes.ReplaceAll(in, []byte(`"`+ocispec.MediaTypeImageLayer+`"`), []byte(`"`+MediaTypeDockerLayer+`"`))
	if got, err := NormalizeManifest(ManifestInput{MediaType: mt, Manifest: docker, Compressions: comps, RetypeCompressedTar: true}); err != nil || got.Changed() {
		t.Fatalf("Docker's plain type: %v %+v", err, got.Changes)
	}
}

func TestDetectCompression(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, blob string
		want       Compression
	}{
		{"gzip", "\x1f\x8b\x08\x00rest", Gzip},
		{"zstd", "\x28\xb5\x2f\xfdrest", Zstd},
		{"tar", "etc/\x00\x00\x00\x00", Uncompressed},
		{"short", "\x1f", Uncompressed},
		{"empty", "", Uncompressed},
	} {
		r := strings.NewReader(tc.blob)
		got, err := DetectCompression(r)
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
		if read := len(tc.blob) - r.Len(); read > 4 {
			t.Errorf("%s: read %d bytes", tc.name, read)
		}
	}
}

// FuzzDetectCompression: the answer is the one the first bytes give, and no
// more than four bytes are read.
func FuzzDetectCompression(f *testing.F) {
	for _, seed := range []string{"\x1f\x8b\x08", "\x28\xb5\x2f\xfd", "ustar", ""} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		r := bytes.NewReader(blob)
		got, err := DetectCompression(r)
		if err != nil {
			t.Fatal(err)
		}
		want := Uncompressed
		switch {
		case bytes.HasPrefix(blob, []byte{0x1f, 0x8b}):
			want = Gzip
		case bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			want = Zstd
		}
		if got != want || len(blob)-r.Len() > 4 {
			t.Fatalf("%x: %s after %d bytes, want %s", blob, got, len(blob)-r.Len(), want)
		}
	})
}
