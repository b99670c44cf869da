package cache

import (
	"fmt"
	"path"
	"regexp"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// The layout under the driver's root:
//
//	/blobs/<alg>/<hex[:2]>/<hex>/data          blob bytes
//	/manifests/<alg>/<hex[:2]>/<hex>           manifest envelope (media type + bytes)
//	/schema1/<upstream>/<repository>/_manifests/<alg>/<hex>
//	                                           a schema 1 manifest's envelope, as that repository
//	                                           served it (its digest does not decide its bytes)
//	/variants/<alg>/<hex[:2]>/<hex>/<rules>    normalization verdict of a manifest under one rule set
//	                                           (<rules>: the set's key, ',' written '_'; "none" when empty)
//	/layers/<alg>/<hex[:2]>/<hex>              verdict of a layer
//	/reports/<h[:2]>/<h>                       report entry (h: sha256 of its key)
//	/nodes/<h[:2]>/<h>                         node-config's report (h: sha256 of the node name)
//	/derived/<alg>/<hex[:2]>/<hex>             how a blob or manifest regnorm made was made
//	/retained/<alg>/<hex[:2]>/<hex>            a blob eviction never removes (empty)
//	/access/<alg>/<hex[:2]>/<hex>              a blob's last recorded use: the object's time (empty)
//	/pinned/<alg>/<hex[:2]>/<hex>              a blob a Pod names, last pinned at the object's time (empty)
//	/tags/<upstream>/<repository>/_tags/<tag>  tag record
//	/referrers/<upstream>/<repository>/_referrers/<alg>/<hex>
//	                                           a subject's referrers list, as that repository's
//	                                           upstream last gave it
//	/links/<upstream>/<repository>/_links/<alg>/<hex>
//	                                           the repository holds that digest upstream (empty)
//	/sent/<upstream>/<alg>/<hex[:2]>/<hex>     the upstream sent bytes that verified against that digest (empty)
//	/holds/<upstream>                          until when the upstream is held after a rate limit
//	/_uploads/<id>/data                        blobs being written, never read
//
// Repository components cannot start with '_' (distribution/reference), so
// "_tags" never collides with a repository name.

// digestPath is where a content-addressed record of kind lives.
func digestPath(kind string, dgst digest.Digest) string {
	return path.Join("/"+kind, dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded())
}

func blobPath(dgst digest.Digest) string         { return digestPath("blobs", dgst) + "/data" }
func manifestPath(dgst digest.Digest) string     { return digestPath("manifests", dgst) }
func layerVerdictPath(dgst digest.Digest) string { return digestPath("layers", dgst) }

// rulesKey is the form of a rule set's key that verdicts are kept under.
var rulesKey = regexp.MustCompile(`^[a-z0-9-]+(,[a-z0-9-]+)*$`)

func normalizationPath(dgst digest.Digest, rules string) (string, error) {
	seg := "none"
	if rules != "" {
		if !rulesKey.MatchString(rules) {
			return "", fmt.Errorf("rule set %q is not a key of rule names", rules)
		}
		seg = strings.ReplaceAll(rules, ",", "_")
	}
	return digestPath("variants", dgst) + "/" + seg, nil
}

func derivedPath(dgst digest.Digest) string  { return digestPath("derived", dgst) }
func retainedPath(dgst digest.Digest) string { return digestPath("retained", dgst) }
func accessPath(dgst digest.Digest) string   { return digestPath("access", dgst) }
func pinnedPath(dgst digest.Digest) string   { return digestPath("pinned", dgst) }

// digestFromPath reads the digest back from a path under root laid out by
// digestPath (a blob's trailing "/data" included).
func digestFromPath(root, p string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(p, root+"/")
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 || (len(parts) == 4 && parts[3] != "data") || len(parts) > 4 {
		return "", false
	}
	dgst := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
	if dgst.Validate() != nil || !strings.HasPrefix(parts[2], parts[1]) {
		return "", false
	}
	return dgst, true
}

func linkPath(upstream, repo string, dgst digest.Digest) string {
	return path.Join("/links", escapeSegment(upstream), repo, "_links", dgst.Algorithm().String(), dgst.Encoded())
}

func sentPath(upstream string, dgst digest.Digest) string {
	return path.Join("/sent", escapeSegment(upstream), dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded())
}

func schema1Path(upstream, repo string, dgst digest.Digest) string {
	return path.Join("/schema1", escapeSegment(upstream), repo, "_manifests", dgst.Algorithm().String(), dgst.Encoded())
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
