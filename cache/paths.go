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
//	/tags/<upstream>/<repository>/_tags/<tag>  tag record
//	/_uploads/<id>/data                        blobs being written, never read
//
// Repository components cannot start with '_' (distribution/reference), so
// "_tags" never collides with a repository name.

func blobPath(dgst digest.Digest) string {
	return path.Join("/blobs", dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded(), "data")
}

func manifestPath(dgst digest.Digest) string {
	return path.Join("/manifests", dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded())
}

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
