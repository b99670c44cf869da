// Package mediatype decides what a manifest is from its bytes: the one place
// the media type regnorm stores and serves a manifest with comes from. The
// cache is shared by digest across upstreams and repositories, and a digest
// covers the bytes, not the Content-Type they came with: a type taken from
// an upstream's header would let one upstream change how every other
// upstream's copy of the same bytes is served. A type that is a function of
// the bytes is the same for every writer, replica and restart.
//
// It is pure: standard library, image-spec and internal/schema1 only.
package mediatype

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/schema1"
)

// Docker schema 2 types (the OCI ones are ocispec's, schema 1's are
// schema1's).
const (
	DockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// MaxManifestSize is the largest manifest regnorm reads and serves: an
// upstream's larger answer is refused, so a larger blob is never a manifest.
const MaxManifestSize = 4 << 20

// MaxReferrers is the most descriptors regnorm keeps and serves in one
// subject's referrers list (the OCI distribution spec's referrers API): an
// upstream's longer list is refused, not cut, since a client cannot tell a
// cut list from a whole one. Each signing or attestation adds one; a
// thousand for one digest is an upstream gone wrong, or hostile.
const MaxReferrers = 1000

// OctetStream is the Content-Type of a blob that is not a manifest.
const OctetStream = "application/octet-stream"

// ErrNotManifest is a document regnorm does not serve as a manifest: not a
// JSON object, of a type regnorm does not know, ambiguous, or sent with a
// Content-Type that contradicts it.
var ErrNotManifest = errors.New("not a manifest regnorm serves")

// kind is what a client does with a manifest: resolve a platform in an
// index, pull an image, or convert schema 1.
type kind int

const (
	unknown kind = iota
	index
	image
	schema1Image
)

func (k kind) String() string {
	return [...]string{"not a manifest", "an index", "an image manifest", "a schema 1 manifest"}[k]
}

func kindOf(mediaType string) kind {
	switch mediaType {
	case ocispec.MediaTypeImageIndex, DockerManifestList:
		return index
	case ocispec.MediaTypeImageManifest, DockerManifest:
		return image
	case schema1.MediaTypeSigned, schema1.MediaTypeUnsigned:
		return schema1Image
	}
	return unknown
}

// Known reports whether mediaType is a manifest type regnorm serves: OCI
// image manifest and index, Docker schema 2 manifest and list, Docker
// schema 1 signed and unsigned.
func Known(mediaType string) bool { return kindOf(mediaType) != unknown }

// members are the top-level members of a document that decide its type.
type members struct {
	mediaType     *string
	schemaVersion *int
	// present and not null
	manifests, config, layers, fsLayers, signatures bool
}

// deciding are the names of the members read, as a JSON document names
// them; Go's decoders (containerd's among them) match names without regard
// to case, folding ſ to s and K to k too, so they are compared the same way.
var deciding = []string{"mediaType", "schemaVersion", "manifests", "config", "layers", "fsLayers", "signatures"}

// Of is the media type of manifest, from its bytes alone:
//
//   - the document's own mediaType member, which must be an OCI or Docker
//     schema 2 type, when it has one;
//   - Docker schema 1 for schemaVersion 1 (or fsLayers): signed (prettyjws)
//     when it carries signatures, else unsigned;
//   - otherwise its shape: an OCI index for manifests, an OCI image manifest
//     for config and layers (Docker's schema 2 types always name themselves).
//
// A document whose members contradict each other (an index type with
// layers, a manifest type with manifests, schemaVersion 1 with a schema 2
// type) or that names a deciding member twice is ambiguous: readers would
// disagree on what it is, so it is refused.
func Of(manifest []byte) (string, error) {
	m, err := readMembers(manifest)
	if err != nil {
		return "", err
	}
	return m.mediaTypeOf()
}

// OfBlob is the Content-Type of content served as a blob (asked for through
// /blobs/): the manifest type it names itself, when it is an OCI image
// manifest or index or a Docker schema 2 manifest or list that Of agrees
// with; else OctetStream. containerd's resolver, when /manifests/ fails for
// a digest, asks /blobs/ and keeps the Content-Type as the image's type for
// good (containerd/containerd#13007), so a manifest must not go out as
// OctetStream there; anything else must not go out as a manifest.
//
// Only a type the document names counts: the shape of a document with no
// mediaType (an OCI manifest may omit it) is not enough to call a blob a
// manifest, since any JSON blob (a config, an artifact) may have members
// named config or layers. Schema 1 names no type and stays OctetStream.
// What Of refuses (a type its members contradict, a member twice) is
// OctetStream too: /manifests/ would not serve it as a manifest either.
// It is a function of the bytes alone, like Of.
func OfBlob(content []byte) string {
	if len(content) > MaxManifestSize {
		return OctetStream
	}
	m, err := readMembers(content)
	if err != nil || m.mediaType == nil {
		return OctetStream
	}
	mt, err := m.mediaTypeOf()
	if k := kindOf(mt); err != nil || (k != index && k != image) {
		return OctetStream
	}
	return mt
}

// mediaTypeOf is Of for the document whose deciding members are m.
func (m members) mediaTypeOf() (string, error) {
	isSchema1 := (m.schemaVersion != nil && *m.schemaVersion == 1) || m.fsLayers
	switch {
	case m.mediaType != nil:
		mt := *m.mediaType
		k := kindOf(mt)
		switch {
		case k == unknown || k == schema1Image:
			return "", fmt.Errorf("%w: mediaType %.100q", ErrNotManifest, mt)
		case isSchema1:
			return "", fmt.Errorf("%w: mediaType %s in a schema 1 document", ErrNotManifest, mt)
		case k == index && (m.config || m.layers):
			return "", fmt.Errorf("%w: mediaType %s with config or layers", ErrNotManifest, mt)
		case k == image && m.manifests:
			return "", fmt.Errorf("%w: mediaType %s with manifests", ErrNotManifest, mt)
		}
		return mt, nil
	case isSchema1:
		if m.manifests || m.config || m.layers {
			return "", fmt.Errorf("%w: a schema 1 document with manifests, config or layers", ErrNotManifest)
		}
		if m.signatures {
			return schema1.MediaTypeSigned, nil
		}
		return schema1.MediaTypeUnsigned, nil
	case m.manifests && !m.config && !m.layers:
		return ocispec.MediaTypeImageIndex, nil
	case (m.config || m.layers) && !m.manifests:
		return ocispec.MediaTypeImageManifest, nil
	}
	return "", fmt.Errorf("%w: neither a mediaType nor the members of an index or an image manifest", ErrNotManifest)
}

// FromUpstream is the media type of a manifest an upstream answered with
// contentType: Of(manifest), provided contentType agrees. It agrees when it
// is generic (none, JSON, text, octet-stream: the content decides), or names
// the same kind of manifest as the content (an OCI type for a Docker one of
// the same kind is what containerd itself accepts). Anything else (an index
// type for an image manifest, text/html) is an upstream answering wrong.
func FromUpstream(contentType string, manifest []byte) (string, error) {
	mt, err := Of(manifest)
	if err != nil {
		return "", err
	}
	ct, _, perr := mime.ParseMediaType(contentType)
	if perr != nil && ct == "" && strings.TrimSpace(contentType) != "" {
		return "", fmt.Errorf("%w: Content-Type %.100q", ErrNotManifest, contentType)
	}
	switch ct {
	case "", "application/json", "text/plain", OctetStream:
		return mt, nil
	}
	if k := kindOf(ct); k != kindOf(mt) {
		return "", fmt.Errorf("%w: sent as %.100q (%s), the content is %s (%s)", ErrNotManifest, ct, k, kindOf(mt), mt)
	}
	return mt, nil
}

// readMembers reads the deciding members of the JSON object doc.
func readMembers(doc []byte) (members, error) {
	if !json.Valid(doc) {
		return members{}, fmt.Errorf("%w: not JSON", ErrNotManifest)
	}
	var m members
	dec := json.NewDecoder(bytes.NewReader(doc))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return members{}, fmt.Errorf("%w: not a JSON object", ErrNotManifest)
	}
	seen := make([]bool, len(deciding))
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return members{}, fmt.Errorf("%w: %v", ErrNotManifest, err)
		}
		name := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return members{}, fmt.Errorf("%w: %v", ErrNotManifest, err)
		}
		i := -1
		for j, d := range deciding {
			if strings.EqualFold(name, d) {
				i = j
			}
		}
		if i < 0 {
			continue
		}
		if seen[i] {
			return members{}, fmt.Errorf("%w: member %s twice", ErrNotManifest, deciding[i])
		}
		seen[i] = true
		if string(raw) == "null" {
			continue
		}
		switch deciding[i] {
		case "mediaType":
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return members{}, fmt.Errorf("%w: mediaType is not a string", ErrNotManifest)
			}
			if s != "" { // as decoders read it: no type named
				m.mediaType = &s
			}
		case "schemaVersion":
			var v int
			if err := json.Unmarshal(raw, &v); err != nil {
				return members{}, fmt.Errorf("%w: schemaVersion is not an integer", ErrNotManifest)
			}
			m.schemaVersion = &v
		case "manifests":
			m.manifests = true
		case "config":
			m.config = true
		case "layers":
			m.layers = true
		case "fsLayers":
			m.fsLayers = true
		case "signatures":
			m.signatures = true
		}
	}
	return m, nil
}
