package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/errcode"
)

// Manifest is a manifest as an upstream sent it, verified: Digest is the
// digest of Content (of its payload, for schema 1) and MediaType the type
// of Content itself.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Content   []byte
}

// maxManifestSize caps a manifest read from upstream: manifests are held in
// memory. A larger one is refused.
const maxManifestSize = mediatype.MaxManifestSize

// defaultAccept is what upstream is asked for when the client names nothing
// usable: every manifest type containerd understands.
var defaultAccept = []string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest, mediatype.DockerManifestList, mediatype.DockerManifest}

// HeadManifest asks upstream which digest ref (a tag or a digest) points to
// in the repository, with accept as the client's media types (see
// acceptHeader). An empty digest means upstream did not say. A refusal or
// failure is the *errcode.Error a client would get (code MANIFEST_UNKNOWN
// for a 404).
func (r *Repository) HeadManifest(ctx context.Context, ref string, accept []string) (digest.Digest, error) {
	resp, err := r.reg.doCounted(ctx, http.MethodHead, r.name, r.path("manifests", ref), nil, acceptHeader(accept))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", r.reg.statusError(resp, errcode.ManifestUnknown)
	}
	drain(resp)
	dgst, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", nil
	}
	return dgst, nil
}

// GetManifest fetches ref (a tag or a digest) from the repository, with
// accept as the client's media types (see acceptHeader), and verifies it:
// against want when the request was by digest, else against the upstream's
// Docker-Content-Digest when it sends one; its size against
// maxManifestSize; its media type from its content (mediatype). What fails
// verification is a 502 MANIFEST_INVALID; a refusal or failure upstream is
// the *errcode.Error a client would get (MANIFEST_UNKNOWN for a 404).
func (r *Repository) GetManifest(ctx context.Context, ref string, accept []string, want digest.Digest) (Manifest, error) {
	u := r.reg
	resp, err := u.doCounted(ctx, http.MethodGet, r.name, r.path("manifests", ref), nil, acceptHeader(accept))
	if err != nil {
		return Manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, u.statusError(resp, errcode.ManifestUnknown)
	}
	defer resp.Body.Close()
	// Held, and charged to the upstream's memory, while it is read and
	// checked; then it is the caller's.
	h := u.mem.hold()
	defer h.release()
	body, err := readWhole(resp.Body, resp.ContentLength, maxManifestSize, h)
	switch {
	case errors.Is(err, errTooLong):
		return Manifest{}, errcode.New(http.StatusBadGateway, errcode.ManifestInvalid, fmt.Sprintf("upstream manifest is larger than %d bytes", maxManifestSize), nil)
	case errors.Is(err, ErrBodyMemorySpent):
		return Manifest{}, err
	case err != nil:
		return Manifest{}, errcode.New(http.StatusBadGateway, errcode.Unavailable, "reading manifest from upstream "+u.name+" failed", err)
	}

	// The type is the content's (mediatype.Of): the cache is shared by
	// digest, and another upstream's copy of these bytes must be served as
	// they are, whatever this one calls them. A Content-Type that says
	// otherwise, or is not a manifest's at all, is an upstream answering
	// wrong: nothing of it is cached or served.
	mediaType, err := mediatype.FromUpstream(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return Manifest{}, errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
			fmt.Sprintf("upstream %s answered with a document that is not a manifest regnorm serves", u.name), err)
	}
	// A schema 1 manifest is known by the digest of its payload (without
	// its signatures); every other by the digest of its bytes.
	claimed := want
	if claimed == "" {
		if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && h.Algorithm().Available() {
			claimed = h
		}
	}
	alg := digest.Canonical
	if claimed != "" {
		alg = claimed.Algorithm()
	}
	got, err := schema1.ManifestDigest(alg, mediaType, body)
	if err != nil || (claimed != "" && got != claimed) {
		return Manifest{}, errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
			fmt.Sprintf("upstream %s sent a manifest that hashes to %s, not %s", u.name, got, claimed), err)
	}
	return Manifest{MediaType: mediaType, Digest: got, Content: body}, nil
}

// acceptHeader is the Accept header upstream is asked with: the client's
// types, then those of the modern four it lacks, then schema 1. So a tag
// that exists only as schema 1 is found, and one that exists as anything
// newer is never converted down for one client's narrow list (distribution
// v2 and Quay convert to schema 1 when the list lacks the stored type) and
// then cached as the tag for every client.
func acceptHeader(accept []string) http.Header {
	all := slices.Clone(accept)
	for _, mt := range defaultAccept {
		if !slices.Contains(all, mt) {
			all = append(all, mt)
		}
	}
	all = append(all, schema1.MediaTypeSigned, schema1.MediaTypeUnsigned)
	return http.Header{"Accept": {strings.Join(all, ", ")}}
}
