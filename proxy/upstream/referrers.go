package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/errcode"
)

const (
	// maxReferrersPages is how many pages of one referrers list regnorm
	// follows: each is a request, and together they are read within
	// maxManifestSize.
	maxReferrersPages = 16
	// maxReferrersQuery caps the query of a next page's link: the spec
	// leaves it to the registry, and it is sent back as it is.
	maxReferrersQuery = 1 << 10
)

// Referrers is a subject's referrers list as an upstream has it: the
// descriptors of the manifests that name it as their subject, each
// checked, in the upstream's order.
type Referrers struct {
	Manifests []ocispec.Descriptor
	// FromTag says the upstream has no referrers API (it answered 404, 405
	// or 501) and the list is the tag schema's index (ReferrersTag), or
	// empty where that tag does not exist or holds no valid index.
	FromTag bool
	// Granted says the upstream answered the client's credentials with a
	// 200 (the referrers API's, or the tag's): it let them read the
	// repository. Two 404s (no API, no tag) say nothing of that: a
	// registry answers a client who may not read a repository just so.
	Granted bool
}

// ReferrersTag is the tag under which the distribution spec's tag schema
// keeps subject's referrers, for registries without the referrers API:
// <alg>-<encoded>, the algorithm cut to 32 characters and the rest to 64.
func ReferrersTag(subject digest.Digest) string {
	alg, enc := subject.Algorithm().String(), subject.Encoded()
	return alg[:min(len(alg), 32)] + "-" + enc[:min(len(enc), 64)]
}

// Referrers is subject's referrers list in the repository, unfiltered, as
// the upstream claims it (nothing here fetches the manifests it names):
// from the referrers API (OCI distribution spec 1.1), its pages followed,
// or where the upstream has no such API (noReferrersAPI), from the tag
// schema (ReferrersTag). A descriptor listed twice is kept once, where it
// came first. The answers are read within maxManifestSize in all and the
// upstream's share of the memory for answers; a list that is not an index
// of valid descriptors, or lists more than mediatype.MaxReferrers, is a
// 502 (refused, never cut: a client cannot tell a cut list from a whole
// one). A refusal or failure upstream is the *errcode.Error a client
// would get.
func (r *Repository) Referrers(ctx context.Context, subject digest.Digest) (Referrers, error) {
	u := r.reg
	path := r.path("referrers", subject.String())
	var out Referrers
	var query url.Values
	read := int64(0)
	seen := map[digest.Digest]bool{}
	for page := 1; ; page++ {
		resp, err := u.doCounted(ctx, http.MethodGet, r.name, path, query, http.Header{"Accept": {ocispec.MediaTypeImageIndex}})
		if err != nil {
			return Referrers{}, err
		}
		if noReferrersAPI(resp.StatusCode) && page == 1 {
			// No referrers API: the spec's fallback is the tag schema.
			drain(resp)
			return r.referrersFromTag(ctx, subject)
		}
		if resp.StatusCode != http.StatusOK {
			return Referrers{}, u.statusError(resp, errcode.ManifestUnknown)
		}
		out.Granted = true
		next, nextErr := referrersNext(resp.Header.Values("Link"), resp.Request)
		h := u.mem.hold()
		body, err := readWhole(resp.Body, resp.ContentLength, maxManifestSize-read, h)
		resp.Body.Close()
		if err == nil {
			read += int64(len(body))
			out.Manifests, err = appendReferrers(out.Manifests, seen, body)
		}
		h.release()
		switch {
		case errors.Is(err, errTooLong):
			return Referrers{}, r.badReferrers(subject, fmt.Sprintf("a referrers list larger than %d bytes", maxManifestSize), nil)
		case errors.Is(err, ErrBodyMemorySpent):
			return Referrers{}, err
		case errors.Is(err, errTooManyReferrers):
			return Referrers{}, r.badReferrers(subject, fmt.Sprintf("more than %d referrers (regnorm refuses the list rather than cut it)", mediatype.MaxReferrers), err)
		case err != nil:
			return Referrers{}, r.badReferrers(subject, "a referrers list that is not an index of valid descriptors", err)
		case nextErr != nil:
			return Referrers{}, r.badReferrers(subject, "a next page of referrers regnorm does not follow", nextErr)
		case next == nil:
			return out, nil
		case page == maxReferrersPages:
			return Referrers{}, r.badReferrers(subject, fmt.Sprintf("a referrers list of more than %d pages", maxReferrersPages), nil)
		}
		query = next
	}
}

// noReferrersAPI says an answer to the referrers API's first page means
// the upstream has no such API. The spec names 404 (and forbids it of a
// registry that has the API); 405 and 501 say the same of a route, from
// registries and fronts that answer an unknown one so. A 400 does not:
// the spec keeps it for a request the API finds invalid. Falling back
// costs a tag's GET as the client, whose answer grants nothing more.
func noReferrersAPI(status int) bool {
	return status == http.StatusNotFound || status == http.StatusMethodNotAllowed || status == http.StatusNotImplemented
}

// referrersFromTag is subject's referrers list under the tag schema: the
// index tagged ReferrersTag(subject), or none where that tag does not
// exist or "does not return a valid image index" (the spec: the client
// SHOULD then assume there are no referrers). A tag that holds anything
// is a 200 to the client's credentials (Granted).
func (r *Repository) referrersFromTag(ctx context.Context, subject digest.Digest) (Referrers, error) {
	m, err := r.GetManifest(ctx, ReferrersTag(subject), []string{ocispec.MediaTypeImageIndex}, "")
	var e *errcode.Error
	switch {
	case errors.As(err, &e) && e.Status == http.StatusNotFound:
		return Referrers{FromTag: true}, nil
	case err != nil:
		return Referrers{}, err
	case m.MediaType != ocispec.MediaTypeImageIndex:
		// An image tagged with a name that looks like the schema's.
		return Referrers{FromTag: true, Granted: true}, nil
	}
	manifests, err := appendReferrers(nil, map[digest.Digest]bool{}, m.Content)
	switch {
	case errors.Is(err, errTooManyReferrers):
		return Referrers{}, r.badReferrers(subject, fmt.Sprintf("more than %d referrers (regnorm refuses the list rather than cut it)", mediatype.MaxReferrers), err)
	case err != nil:
		// An index, but not of valid descriptors: not a valid image index.
		return Referrers{FromTag: true, Granted: true}, nil
	}
	return Referrers{Manifests: manifests, FromTag: true, Granted: true}, nil
}

func (r *Repository) badReferrers(subject digest.Digest, what string, cause error) error {
	return errcode.New(http.StatusBadGateway, errcode.ManifestInvalid,
		fmt.Sprintf("upstream %s sent %s for %s", r.reg.name, what, subject), cause)
}

// errTooManyReferrers is the cause of a list past mediatype.MaxReferrers.
var errTooManyReferrers = errors.New("too many referrers")

// appendReferrers appends the descriptors of the referrers index body to
// have, each checked as it is decoded, and fails before decoding the one
// past mediatype.MaxReferrers: an index of empty objects would otherwise
// cost far more memory decoded than read. Of each descriptor only what the
// spec says a referrers list carries is kept (media type, digest, size,
// artifact type, annotations), and only the first of a digest (seen holds
// those of have, and is added to): a registry whose pages overlap lists
// one twice.
func appendReferrers(have []ocispec.Descriptor, seen map[digest.Digest]bool, body []byte) ([]ocispec.Descriptor, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := delim(dec, '{'); err != nil {
		return nil, err
	}
	listed := false
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch key {
		case "mediaType":
			var mt string
			if err := dec.Decode(&mt); err != nil {
				return nil, err
			}
			if mt != ocispec.MediaTypeImageIndex {
				return nil, fmt.Errorf("an index of type %.100q", mt)
			}
		case "manifests":
			if listed {
				return nil, errors.New("two manifests fields")
			}
			listed = true
			if have, err = appendDescriptors(dec, have, seen); err != nil {
				return nil, err
			}
		default:
			if err := skipValue(dec); err != nil {
				return nil, err
			}
		}
	}
	if err := delim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("something after the index (%v)", err)
	}
	if !listed {
		return nil, errors.New("no manifests field")
	}
	return have, nil
}

func appendDescriptors(dec *json.Decoder, have []ocispec.Descriptor, seen map[digest.Digest]bool) ([]ocispec.Descriptor, error) {
	if err := delim(dec, '['); err != nil {
		return nil, err
	}
	for dec.More() {
		if len(have) == mediatype.MaxReferrers {
			return nil, fmt.Errorf("%w: more than %d", errTooManyReferrers, mediatype.MaxReferrers)
		}
		var d ocispec.Descriptor
		if err := dec.Decode(&d); err != nil {
			return nil, err
		}
		if err := checkReferrer(d); err != nil {
			return nil, err
		}
		if seen[d.Digest] {
			continue
		}
		seen[d.Digest] = true
		have = append(have, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType, Annotations: d.Annotations})
	}
	return have, delim(dec, ']')
}

// checkReferrer is nil when d can be listed as a referrer: a manifest's
// descriptor with a valid digest and size.
func checkReferrer(d ocispec.Descriptor) error {
	switch {
	case d.Digest.Validate() != nil:
		return fmt.Errorf("a referrer with digest %.100q", d.Digest)
	case d.MediaType == "":
		return fmt.Errorf("referrer %s has no media type", d.Digest)
	case d.Size < 0 || d.Size > maxManifestSize:
		return fmt.Errorf("referrer %s of size %d: no manifest is", d.Digest, d.Size)
	}
	return nil
}

// referrersNext is the query of the next page a referrers answer's Link
// headers name, nil when they name none. The link is resolved against the
// URL that answered (req's, RFC 8288), and only a link to the same list
// is followed: the path regnorm asked for (under the upstream's path
// prefix, if it has one). Only its query is taken: where it points and the
// rest are never used.
func referrersNext(links []string, req *http.Request) (url.Values, error) {
	target, ok := nextLink(links)
	if !ok {
		return nil, nil
	}
	ref, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("next link: %w", err)
	}
	// The path asked for is the first request's, before any redirect.
	asked := req
	for asked.Response != nil && asked.Response.Request != nil {
		asked = asked.Response.Request
	}
	u := req.URL.ResolveReference(ref)
	switch {
	case u.EscapedPath() != asked.URL.EscapedPath():
		return nil, fmt.Errorf("next link to %.200q, not to %s", u.Path, asked.URL.Path)
	case len(u.RawQuery) > maxReferrersQuery:
		return nil, fmt.Errorf("next link's query is longer than %d bytes", maxReferrersQuery)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("next link's query: %w", err)
	}
	return q, nil
}
