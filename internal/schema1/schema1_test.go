package schema1_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/internal/schema1"
)

func image(t *testing.T, unsigned bool) regtest.Schema1Image {
	t.Helper()
	img, err := regtest.BuildSchema1(regtest.Schema1Options{Cmd: []string{"/hello"}, Unsigned: unsigned},
		regtest.Schema1Layer{Files: []regtest.File{{Name: "hello", Content: []byte("hi\n")}}}, regtest.Schema1Layer{Throwaway: true})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// frame wraps payload in one signature block whose protected header says
// formatLength and tail, with extra appended after the signatures.
func frame(payload []byte, formatLength int, tail, extra string, sigs int) []byte {
	protected := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"formatLength":%d,"formatTail":%q}`,
		formatLength, base64.RawURLEncoding.EncodeToString([]byte(tail)))))
	entries := strings.Repeat(`{"signature":"c2ln","protected":"`+protected+`"},`, sigs)
	return []byte(string(payload[:formatLength]) + `,"signatures":[` + strings.TrimSuffix(entries, ",") + `]` + extra + tail)
}

// A manifest signed by libtrust (as Docker and distribution signed them) is
// known by its payload, and so is its unsigned form.
func TestPayloadOfRealManifests(t *testing.T) {
	t.Parallel()
	for _, unsigned := range []bool{false, true} {
		img := image(t, unsigned)
		p, err := schema1.Payload(img.Manifest)
		if err != nil || !bytes.Equal(p, img.Payload) {
			t.Fatalf("unsigned=%v: %v", unsigned, err)
		}
		if d, err := schema1.ManifestDigest(digest.SHA256, img.MediaType, img.Manifest); err != nil || d != img.Digest {
			t.Fatalf("unsigned=%v: digest %s, %v; want %s", unsigned, d, err, img.Digest)
		}
	}
}

// Everything a reader of the whole document could act on is in the
// payload: anything else is refused, not hashed around.
func TestStrictFraming(t *testing.T) {
	t.Parallel()
	img := image(t, false)
	payload := img.Payload
	end := bytes.LastIndexByte(payload, '}')
	schema2 := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}`)
	for name, doc := range map[string][]byte{
		"a schema 2 manifest framed as schema 1": frame(schema2, len(schema2)-1, "}", "", 1),
		"members after the signatures":           frame(payload, end, "\n}", `,"fsLayers":[{"blobSum":"sha256:evil"}]`, 1),
		"a tail that is not the closing brace":   frame(payload, end, `,"fsLayers":[]}`, "", 1),
		"a member twice in the payload":          bytes.Replace(img.Manifest, []byte(`"schemaVersion": 1,`), []byte(`"schemaVersion": 1, "name": "x", "name": "y",`), 1),
		"too many signatures":                    frame(payload, end, "\n}", "", 17),
		"a member twice, in two cases":           bytes.Replace(img.Manifest, []byte(`"schemaVersion": 1,`), []byte(`"schemaVersion": 1, "FSLayers": [],`), 1),
		"signatures with a long s":               bytes.Replace(frame(payload, end, "\n}", "", 1), []byte(`"signatures"`), []byte(`"\u017fignatures"`), 1),
		"signatures in another case":             bytes.Replace(frame(payload, end, "\n}", "", 1), []byte(`"signatures"`), []byte(`"Signatures"`), 1),
		"a frame past the end":                   frame(payload, end, "\n}", "", 1)[:end],
	} {
		if _, err := schema1.Payload(doc); !errors.Is(err, schema1.ErrMalformed) {
			t.Errorf("%s: %v; want ErrMalformed", name, err)
		}
	}
	if _, err := schema1.Payload(frame(payload, end, "\n}", "", 16)); err != nil {
		t.Errorf("16 signatures framing one payload: %v", err)
	}
}

// A manifest of many signatures is refused (the time it took is logged).
func TestManySignaturesAreRefused(t *testing.T) {
	t.Parallel()
	img := image(t, false)
	end := bytes.LastIndexByte(img.Payload, '}')
	doc := frame(img.Payload, end, "\n}", "", 50000) // about 4 MiB
	start := time.Now()
	_, err := schema1.Payload(doc)
	if !errors.Is(err, schema1.ErrMalformed) {
		t.Fatalf("%d bytes, 50000 signatures: %v", len(doc), err)
	}
	t.Logf("%d bytes refused in %v", len(doc), time.Since(start))
}
