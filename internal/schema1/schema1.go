// Package schema1 knows what a Docker schema 1 manifest's digest is the
// digest of: for a signed one, its JWS payload, not its bytes. The cache
// verifies manifests with it and rewrite converts them; it is pure.
package schema1

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// Docker schema 1 manifest types: signed (libtrust JWS, "pretty" form) and
// unsigned.
const (
	MediaTypeSigned   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	MediaTypeUnsigned = "application/vnd.docker.distribution.manifest.v1+json"
)

// Is reports whether mediaType is a Docker schema 1 manifest.
func Is(mediaType string) bool {
	return mediaType == MediaTypeSigned || mediaType == MediaTypeUnsigned
}

// ErrMalformed means a schema 1 manifest is malformed: its signatures do
// not frame a payload.
var ErrMalformed = errors.New("malformed schema 1 manifest")

// Payload is what a schema 1 manifest's digest is the digest of. A
// signed manifest (libtrust's "pretty" JWS) is known by its payload: the
// manifest without its signatures, which every signature's protected
// header frames (formatLength bytes of the manifest, then formatTail). All
// signatures must frame the same payload. An unsigned manifest is its own
// payload. The signatures themselves are not checked: neither registries'
// digests nor containerd depend on them.
func Payload(manifest []byte) ([]byte, error) {
	var doc struct {
		Signatures []struct {
			Protected string `json:"protected"`
		} `json:"signatures"`
	}
	if !json.Valid(manifest) {
		return nil, fmt.Errorf("%w: not JSON", ErrMalformed)
	}
	if err := json.Unmarshal(manifest, &doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(doc.Signatures) == 0 {
		return manifest, nil
	}
	var payload []byte
	for i, sig := range doc.Signatures {
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(sig.Protected, "="))
		if err != nil {
			return nil, fmt.Errorf("%w: signature %d: protected header: %v", ErrMalformed, i, err)
		}
		var protected struct {
			FormatLength int    `json:"formatLength"`
			FormatTail   string `json:"formatTail"`
		}
		if err := json.Unmarshal(raw, &protected); err != nil {
			return nil, fmt.Errorf("%w: signature %d: protected header: %v", ErrMalformed, i, err)
		}
		tail, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(protected.FormatTail, "="))
		if err != nil {
			return nil, fmt.Errorf("%w: signature %d: format tail: %v", ErrMalformed, i, err)
		}
		if protected.FormatLength <= 0 || protected.FormatLength > len(manifest) {
			return nil, fmt.Errorf("%w: signature %d: format length %d of %d bytes", ErrMalformed, i, protected.FormatLength, len(manifest))
		}
		p := append(manifest[:protected.FormatLength:protected.FormatLength], tail...)
		if payload != nil && !bytes.Equal(p, payload) {
			return nil, fmt.Errorf("%w: signatures frame different payloads", ErrMalformed)
		}
		payload = p
	}
	if !json.Valid(payload) {
		return nil, fmt.Errorf("%w: the signed payload is not JSON", ErrMalformed)
	}
	return payload, nil
}

// Digest is the digest a schema 1 manifest is known by (see
// Payload).
func Digest(manifest []byte) (digest.Digest, error) {
	payload, err := Payload(manifest)
	if err != nil {
		return "", err
	}
	return digest.FromBytes(payload), nil
}

// ManifestDigest is the digest with alg that a manifest of mediaType is
// known by: of its payload for schema 1, of its bytes for every other type.
func ManifestDigest(alg digest.Algorithm, mediaType string, content []byte) (digest.Digest, error) {
	if !Is(mediaType) {
		return alg.FromBytes(content), nil
	}
	payload, err := Payload(content)
	if err != nil {
		return "", err
	}
	return alg.FromBytes(payload), nil
}
