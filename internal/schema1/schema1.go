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
	"slices"
	"strings"
	"unicode/utf8"

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

// Limits on what a schema 1 manifest may carry besides its payload.
const (
	maxSignatures     = 16
	maxProtectedBytes = 4 << 10
)

// Payload is what a schema 1 manifest's digest is the digest of. A signed
// manifest (libtrust's "pretty" JWS) is known by its payload: the manifest
// without its signatures, which every signature's protected header frames
// (formatLength bytes of the manifest, then formatTail). The signatures
// themselves are not checked: neither registries' digests nor containerd
// depend on them. An unsigned manifest is its own payload.
//
// Whatever a reader of the whole document could act on must be in the
// payload, so the framing is strict: every signature frames the same
// payload; after it come only the "signatures" member and the closing
// brace; the payload is a schema 1 manifest (schemaVersion 1, fsLayers,
// history) with no "signatures" member and no member twice.
func Payload(manifest []byte) ([]byte, error) {
	keys, err := topLevelKeys(manifest)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(keys, "signatures") {
		return manifest, checkPayload(manifest)
	}
	var doc struct {
		Signatures []struct {
			Protected string `json:"protected"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal(manifest, &doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if n := len(doc.Signatures); n == 0 || n > maxSignatures {
		return nil, fmt.Errorf("%w: %d signatures (1 to %d)", ErrMalformed, n, maxSignatures)
	}
	type frame struct {
		FormatLength int    `json:"formatLength"`
		FormatTail   string `json:"formatTail"`
	}
	var first frame
	for i, sig := range doc.Signatures {
		if len(sig.Protected) > maxProtectedBytes {
			return nil, fmt.Errorf("%w: signature %d: protected header of %d bytes", ErrMalformed, i, len(sig.Protected))
		}
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(sig.Protected, "="))
		if err != nil {
			return nil, fmt.Errorf("%w: signature %d: protected header: %v", ErrMalformed, i, err)
		}
		var f frame
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("%w: signature %d: protected header: %v", ErrMalformed, i, err)
		}
		if i == 0 {
			first = f
		} else if f != first {
			return nil, fmt.Errorf("%w: signatures frame different payloads", ErrMalformed)
		}
	}
	tail, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(first.FormatTail, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: format tail: %v", ErrMalformed, err)
	}
	if n := first.FormatLength; n <= 0 || n >= len(manifest) || string(bytes.TrimSpace(tail)) != "}" {
		return nil, fmt.Errorf("%w: a frame of %d bytes and tail %q in %d bytes", ErrMalformed, n, tail, len(manifest))
	}
	if err := onlySignaturesAfter(manifest[first.FormatLength:]); err != nil {
		return nil, err
	}
	payload := append(manifest[:first.FormatLength:first.FormatLength], tail...)
	return payload, checkPayload(payload)
}

// onlySignaturesAfter checks that what follows the payload's frame is the
// "signatures" member and the closing brace, nothing else.
func onlySignaturesAfter(rest []byte) error {
	bad := fmt.Errorf("%w: something besides the signatures follows the signed payload", ErrMalformed)
	rest = bytes.TrimLeft(rest, " \t\r\n")
	rest, ok := bytes.CutPrefix(rest, []byte(","))
	if !ok {
		return bad
	}
	rest = bytes.TrimLeft(rest, " \t\r\n")
	if rest, ok = bytes.CutPrefix(rest, []byte(`"signatures"`)); !ok {
		return bad
	}
	rest = bytes.TrimLeft(rest, " \t\r\n")
	if rest, ok = bytes.CutPrefix(rest, []byte(":")); !ok {
		return bad
	}
	dec := json.NewDecoder(bytes.NewReader(rest))
	var sigs []json.RawMessage
	if err := dec.Decode(&sigs); err != nil {
		return bad
	}
	if string(bytes.TrimSpace(rest[dec.InputOffset():])) != "}" {
		return bad
	}
	return nil
}

// checkPayload holds a payload to be a schema 1 manifest with nothing
// twice and no signatures of its own.
func checkPayload(payload []byte) error {
	keys, err := topLevelKeys(payload)
	if err != nil {
		return err
	}
	if slices.Contains(keys, "signatures") {
		return fmt.Errorf("%w: the signed payload has signatures of its own", ErrMalformed)
	}
	var m struct {
		SchemaVersion int               `json:"schemaVersion"`
		FSLayers      []json.RawMessage `json:"fsLayers"`
		History       []json.RawMessage `json:"history"`
	}
	if err := json.Unmarshal(payload, &m); err != nil || m.SchemaVersion != 1 || m.FSLayers == nil || m.History == nil {
		return fmt.Errorf("%w: not a schema 1 manifest (schemaVersion, fsLayers, history)", ErrMalformed)
	}
	return nil
}

// topLevelKeys lists the members of the JSON object doc (in lower case),
// refusing one that names a member twice, in any case (readers disagree on
// which one counts), and "signatures" in any case but lower.
func topLevelKeys(doc []byte) ([]string, error) {
	if !json.Valid(doc) {
		return nil, fmt.Errorf("%w: not JSON", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var keys []string
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		// Go's JSON readers (libtrust's, containerd's) match member names
		// without regard to case, folding some letters beyond ASCII too
		// (ſ is s): names are held to ASCII, and compared in lower case.
		key := strings.ToLower(t.(string))
		if strings.ContainsFunc(key, func(r rune) bool { return r >= utf8.RuneSelf }) {
			return nil, fmt.Errorf("%w: a member %q", ErrMalformed, t)
		}
		if seen[key] {
			return nil, fmt.Errorf("%w: %q twice", ErrMalformed, t)
		}
		if key == "signatures" && t != "signatures" {
			return nil, fmt.Errorf("%w: a member %q", ErrMalformed, t)
		}
		seen[key] = true
		keys = append(keys, key)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	return keys, nil
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
