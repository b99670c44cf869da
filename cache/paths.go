package cache

import (
	"fmt"
	"path"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// The layout under the driver's root:
//
//	/blobs/<alg>/<hex[:2]>/<hex>/data          blob bytes
//	/manifests/<alg>/<hex[:2]>/<hex>           manifest envelope (media type + bytes)
//	/normalized/<alg>/<hex[:2]>/<hex>          normalization verdict of a manifest
//	/layers/<alg>/<hex[:2]>/<hex>              verdict of a layer
//	/reports/<h[:2]>/<h>                       report entry (h: sha256 of its key)
//	/derived/<alg>/<hex[:2]>/<hex>             how a blob regnorm made was made
//	/tags/<upstream>/<repository>/_tags/<tag>  tag record
//	/_uploads/<id>/data                        blobs being written, never read
//
// Repository components cannot start with '_' (distribution/reference), so
// "_tags" never collides with a repository name.

// digestPath is where a content-addressed record of kind lives.
func digestPath(kind string, dgst digest.Digest) string {
	return path.Join("/"+kind, dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded())
}

func blobPath(dgst digest.Digest) string          { return digestPath("blobs", dgst) + "/data" }
func manifestPath(dgst digest.Digest) string      { return digestPath("manifests", dgst) }
func normalizationPath(dgst digest.Digest) string { return digestPath("normalized", dgst) }
func layerVerdictPath(dgst digest.Digest) string  { return digestPath("layers", dgst) }

func tagPath(upstream, repo, tag string) string {
	return path.Join("/tags", escapeSegment(upstream), repo, "_tags", tag)
}

func uploadPath(id string) string {
	return path.Join("/_uploads", id, "data")
}

// escapeSegment makes an upstream name such as "127.0.0.1:5000" a valid
// storage path component ([A-Za-z0-9._-]). '_' is the escape character, so
// the mapping is injective.
func escapeSegment(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return b.String()
}
