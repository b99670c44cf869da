package mediatype_test

import (
	"errors"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/schema1"
)

const (
	dockerManifest = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}`
	dockerList     = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`
	ociManifest    = `{"schemaVersion":2,"config":{},"layers":[]}`
	ociIndex       = `{"schemaVersion":2,"manifests":[]}`
	schema1Signed  = `{"schemaVersion":1,"fsLayers":[],"history":[],"signatures":[]}`
	schema1Plain   = `{"schemaVersion":1,"fsLayers":[],"history":[]}`
)

func TestOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc string
		want      string // "" for ErrNotManifest
	}{
		{"docker manifest", dockerManifest, mediatype.DockerManifest},
		{"docker list", dockerList, mediatype.DockerManifestList},
		{"OCI manifest, typed", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`, ocispec.MediaTypeImageManifest},
		{"OCI manifest by its shape", ociManifest, ocispec.MediaTypeImageManifest},
		{"OCI manifest, layers only", `{"schemaVersion":2,"layers":[]}`, ocispec.MediaTypeImageManifest},
		{"OCI index by its shape", ociIndex, ocispec.MediaTypeImageIndex},
		{"empty mediaType is none", `{"schemaVersion":2,"mediaType":"","manifests":[]}`, ocispec.MediaTypeImageIndex},
		{"null members are absent", `{"schemaVersion":2,"manifests":null,"config":{},"layers":[]}`, ocispec.MediaTypeImageManifest},
		{"schema 1 signed", schema1Signed, schema1.MediaTypeSigned},
		{"schema 1 unsigned", schema1Plain, schema1.MediaTypeUnsigned},
		{"schema 1 by fsLayers", `{"fsLayers":[],"history":[]}`, schema1.MediaTypeUnsigned},

		{"index type with layers", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"layers":[]}`, ""},
		{"manifest type with manifests", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"manifests":[]}`, ""},
		{"both shapes, no type", `{"schemaVersion":2,"manifests":[],"config":{}}`, ""},
		{"schema 1 with a schema 2 type", `{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json","fsLayers":[]}`, ""},
		{"schema 1 with manifests", `{"schemaVersion":1,"fsLayers":[],"manifests":[]}`, ""},
		{"schema 1 type named", `{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json","fsLayers":[]}`, ""},
		{"unknown type", `{"schemaVersion":2,"mediaType":"text/html","config":{},"layers":[]}`, ""},
		{"artifact manifest", `{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","blobs":[]}`, ""},
		{"mediaType twice", `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json"}`, ""},
		{"mediaType twice, in other case", `{"mediaType":"application/vnd.oci.image.manifest.v1+json","MEDIATYPE":"application/vnd.oci.image.index.v1+json","config":{}}`, ""},
		{"schemaVersion folded from ſ", `{"ſchemaVersion":1,"schemaVersion":2,"config":{}}`, ""},
		{"mediaType not a string", `{"mediaType":5,"config":{}}`, ""},
		{"schemaVersion not an integer", `{"schemaVersion":"2","config":{}}`, ""},
		{"no deciding member", `{"schemaVersion":2}`, ""},
		{"empty object", `{}`, ""},
		{"an array", `[]`, ""},
		{"not JSON", "\x00\x01 not json", ""},
		{"trailing data", ociIndex + `{}`, ""},
		{"HTML", `<html><script>alert(1)</script></html>`, ""},
		{"deeply nested", `{"config":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := mediatype.Of([]byte(tt.doc))
			if tt.want == "" {
				if !errors.Is(err, mediatype.ErrNotManifest) {
					t.Fatalf("got %q, %v; want ErrNotManifest", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestOfBlob: a blob goes out as a manifest only when it names one of the
// four schema 2 types itself and Of agrees; everything else, and what Of
// refuses, is a plain blob.
func TestOfBlob(t *testing.T) {
	t.Parallel()
	typed := func(mt, members string) string {
		return `{"schemaVersion":2,"mediaType":"` + mt + `",` + members + `}`
	}
	tests := []struct {
		name, doc string
		want      string
	}{
		{"docker manifest", dockerManifest, mediatype.DockerManifest},
		{"docker list", dockerList, mediatype.DockerManifestList},
		{"OCI manifest, typed", typed(ocispec.MediaTypeImageManifest, `"config":{},"layers":[]`), ocispec.MediaTypeImageManifest},
		{"OCI index, typed", typed(ocispec.MediaTypeImageIndex, `"manifests":[]`), ocispec.MediaTypeImageIndex},
		{"leading whitespace", "\n\t " + dockerList, mediatype.DockerManifestList},

		{"OCI manifest by its shape only", ociManifest, mediatype.OctetStream},
		{"OCI index by its shape only", ociIndex, mediatype.OctetStream},
		{"a config", `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}`, mediatype.OctetStream},
		{"schema 1 signed", schema1Signed, mediatype.OctetStream},
		{"schema 1 unsigned", schema1Plain, mediatype.OctetStream},
		{"index type with layers", typed(ocispec.MediaTypeImageIndex, `"manifests":[],"layers":[]`), mediatype.OctetStream},
		{"manifest type with manifests", typed(mediatype.DockerManifest, `"config":{},"manifests":[]`), mediatype.OctetStream},
		{"schema 1 with a schema 2 type", `{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json","fsLayers":[]}`, mediatype.OctetStream},
		{"mediaType twice", `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json"}`, mediatype.OctetStream},
		{"a config's type", typed(ocispec.MediaTypeImageConfig, `"config":{}`), mediatype.OctetStream},
		{"unknown type", typed("text/html", `"config":{}`), mediatype.OctetStream},
		{"gzip", "\x1f\x8b\x08\x00\x00\x00\x00\x00", mediatype.OctetStream},
		{"empty", "", mediatype.OctetStream},
		{"larger than a manifest can be", typed(mediatype.DockerManifest, `"config":{},"layers":[],"pad":"`+strings.Repeat("x", mediatype.MaxManifestSize)+`"`), mediatype.OctetStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := mediatype.OfBlob([]byte(tt.doc)); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestFromUpstream: the content decides; the Content-Type may only agree.
func TestFromUpstream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, contentType, doc string
		want                   string // "" for ErrNotManifest
	}{
		{"as named", mediatype.DockerManifest, dockerManifest, mediatype.DockerManifest},
		{"with parameters", mediatype.DockerManifest + "; charset=utf-8", dockerManifest, mediatype.DockerManifest},
		{"none", "", ociIndex, ocispec.MediaTypeImageIndex},
		{"generic JSON", "application/json", ociManifest, ocispec.MediaTypeImageManifest},
		{"text/plain", "text/plain", schema1Signed, schema1.MediaTypeSigned},
		{"octet-stream", "application/octet-stream", dockerList, mediatype.DockerManifestList},
		// containerd takes one flavour for the other of the same kind; the
		// content's own name is served.
		{"OCI type for a Docker manifest", ocispec.MediaTypeImageManifest, dockerManifest, mediatype.DockerManifest},
		{"Docker type for a shape-only manifest", mediatype.DockerManifest, ociManifest, ocispec.MediaTypeImageManifest},
		{"signed schema 1 sent as unsigned", schema1.MediaTypeUnsigned, schema1Signed, schema1.MediaTypeSigned},

		{"index type for an image manifest", ocispec.MediaTypeImageIndex, dockerManifest, ""},
		{"manifest type for an index", mediatype.DockerManifest, ociIndex, ""},
		{"schema 2 type for schema 1", mediatype.DockerManifest, schema1Signed, ""},
		{"schema 1 type for schema 2", schema1.MediaTypeSigned, ociManifest, ""},
		{"text/html", "text/html", ociManifest, ""},
		{"text/html with parameters", "text/html; charset=utf-8", dockerManifest, ""},
		{"an image type", "image/svg+xml", ociManifest, ""},
		{"unparsable", "/;;;", ociManifest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := mediatype.FromUpstream(tt.contentType, []byte(tt.doc))
			if tt.want == "" {
				if !errors.Is(err, mediatype.ErrNotManifest) {
					t.Fatalf("got %q, %v; want ErrNotManifest", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// FuzzOf: a type Of decides is one regnorm serves, and agrees with itself
// and with a generic Content-Type; whatever Of refuses, FromUpstream does.
func FuzzOf(f *testing.F) {
	for _, doc := range []string{dockerManifest, dockerList, ociManifest, ociIndex, schema1Signed, schema1Plain,
		`{"mediaType":"x"}`, `{"ſchemaVersion":1,"fsLayers":[]}`, "[]", "<html>"} {
		f.Add(doc, "")
		f.Add(doc, ocispec.MediaTypeImageIndex)
	}
	f.Fuzz(func(t *testing.T, doc, contentType string) {
		mt, err := mediatype.Of([]byte(doc))
		// A blob is served as a manifest only as Of types it.
		if blob := mediatype.OfBlob([]byte(doc)); blob != mediatype.OctetStream && (err != nil || blob != mt || schema1.Is(mt)) {
			t.Fatalf("OfBlob = %q; Of = %q, %v", blob, mt, err)
		}
		up, upErr := mediatype.FromUpstream(contentType, []byte(doc))
		if err != nil {
			if !errors.Is(err, mediatype.ErrNotManifest) || upErr == nil {
				t.Fatalf("Of: %v; FromUpstream: %q, %v", err, up, upErr)
			}
			return
		}
		if !mediatype.Known(mt) {
			t.Fatalf("Of decided %q, which regnorm does not serve", mt)
		}
		if upErr == nil && up != mt {
			t.Fatalf("FromUpstream(%q) = %q, Of = %q", contentType, up, mt)
		}
		for _, ct := range []string{mt, "", "application/json"} {
			if got, err := mediatype.FromUpstream(ct, []byte(doc)); err != nil || got != mt {
				t.Fatalf("FromUpstream(%q) = %q, %v; want %q", ct, got, err, mt)
			}
		}
	})
}
