package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Artifact types of the referrers these tests push.
const (
	sigType  = "application/vnd.dev.cosign.artifact.sig.v1+json"
	sbomType = "application/spdx+json"
)

// referrer is a manifest pushed upstream whose subject is another one.
type referrer struct {
	desc    ocispec.Descriptor // as a referrers list names it
	content []byte
}

// pushReferrer pushes to repo an artifact of artifactType whose subject is
// the manifest subject names, with one layer of payload, as ORAS and
// cosign 3 do (an empty config), by digest, untagged.
func (h *harness) pushReferrer(t testing.TB, repo string, subject ocispec.Descriptor, artifactType, payload string) referrer {
	t.Helper()
	empty := []byte("{}")
	h.pushBlob(t, repo, empty)
	layer := []byte(payload)
	h.pushBlob(t, repo, layer)
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: digest.FromBytes(empty), Size: 2},
		Layers:       []ocispec.Descriptor{{MediaType: "application/vnd.example.payload", Digest: digest.FromBytes(layer), Size: int64(len(layer))}},
		Subject:      &subject,
		Annotations:  map[string]string{"org.example.payload": payload},
	}
	content, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromBytes(content)
	if err := h.reg.Client().PushManifest(context.Background(), repo, dgst.String(), ocispec.MediaTypeImageManifest, content); err != nil {
		t.Fatal(err)
	}
	return referrer{content: content, desc: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: dgst, Size: int64(len(content)),
		ArtifactType: artifactType, Annotations: m.Annotations}}
}

// subjectOf is the descriptor of img's manifest.
func subjectOf(img regtest.Image) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: regtest.MediaTypeDockerManifest, Digest: img.ManifestDigest, Size: int64(len(img.Manifest))}
}

// referrersIndex is an OCI index listing rs, as a registry answers.
func referrersIndex(t testing.TB, rs ...referrer) []byte {
	t.Helper()
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	for _, r := range rs {
		idx.Manifests = append(idx.Manifests, r.desc)
	}
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withReferrersAPI makes h's upstream one with the referrers API: the
// distribution registry has none (it answers 404, as the e2e registry
// binary does), so its front answers the referrers of each subject in
// lists with the index listing them, and relays the rest. It counts the
// referrers requests, and the filters they asked for.
func withReferrersAPI(t testing.TB, h *harness, lists map[string][]referrer) (requests *atomic.Int64, filtered *atomic.Int64) {
	requests, filtered = &atomic.Int64{}, &atomic.Int64{}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			h.front.relay(w, r)
			return
		}
		requests.Add(1)
		if r.URL.Query().Has("artifactType") {
			filtered.Add(1)
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Write(referrersIndex(t, lists[r.URL.Path]...))
	})
	return requests, filtered
}

// getReferrers asks h for the referrers of subject in repo, with query
// ("" or "?artifactType=..."), and decodes a 200's index.
func (h *harness) getReferrers(t testing.TB, repo string, subject digest.Digest, query string, header http.Header) (response, ocispec.Index) {
	t.Helper()
	r := h.do(t, http.MethodGet, "/v2/"+repo+"/referrers/"+subject.String()+query, header)
	var idx ocispec.Index
	if r.status == http.StatusOK {
		if got := r.header.Get("Content-Type"); got != ocispec.MediaTypeImageIndex {
			t.Fatalf("Content-Type %q", got)
		}
		if err := json.Unmarshal(r.body, &idx); err != nil {
			t.Fatalf("answer is not an index: %v: %s", err, r.body)
		}
		if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex || idx.Manifests == nil {
			t.Fatalf("not an OCI index with a manifests list: %s", r.body)
		}
	}
	return r, idx
}

// wantListed fails unless idx lists exactly rs, in order, as a referrers
// list names them.
func wantListed(t testing.TB, idx ocispec.Index, rs ...referrer) {
	t.Helper()
	var want []ocispec.Descriptor
	for _, r := range rs {
		want = append(want, r.desc)
	}
	got, _ := json.Marshal(idx.Manifests)
	wantJSON, _ := json.Marshal(want)
	if len(rs) == 0 {
		wantJSON = []byte("[]")
	}
	if !bytes.Equal(got, wantJSON) {
		t.Fatalf("referrers\n%s\nwant\n%s", got, wantJSON)
	}
}

// TestReferrersFromTheAPI: an upstream with the referrers API is asked
// once per tag TTL; its list is answered as an OCI index; the manifests it
// names are served byte for byte by the manifest path.
func TestReferrersFromTheAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	requests, _ := withReferrersAPI(t, h, map[string][]referrer{"/v2/library/app/referrers/" + img.ManifestDigest.String(): {sig, sbom}})

	for i := range 2 {
		r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
		if r.status != http.StatusOK {
			t.Fatalf("GET %d: %d %s", i, r.status, r.body)
		}
		wantListed(t, idx, sig, sbom)
		if r.header.Get("OCI-Filters-Applied") != "" {
			t.Errorf("OCI-Filters-Applied %q with no filter asked", r.header.Get("OCI-Filters-Applied"))
		}
	}
	if got := requests.Load(); got != 1 {
		t.Errorf("upstream asked %d times for the list, want once (then the cached record)", got)
	}
	for _, ref := range []referrer{sig, sbom} {
		r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+ref.desc.Digest.String(), http.Header{"Accept": {ocispec.MediaTypeImageManifest}})
		if r.status != http.StatusOK || !bytes.Equal(r.body, ref.content) {
			t.Fatalf("referrer %s: %d, not its bytes: %s", ref.desc.Digest, r.status, r.body)
		}
	}
}

// TestReferrersTagSchema: the distribution registry has no referrers API
// (404, as the e2e registry binary answers too), and regnorm reads the
// tag schema's index instead; a subject without that tag has no
// referrers: an empty index, not an error.
func TestReferrersTagSchema(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	bare := h.push(t, "library/app", "v2", regtest.ImageOptions{Entrypoint: []string{"/bare"}}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	tag := "sha256-" + img.ManifestDigest.Encoded()
	if err := h.reg.Client().PushManifest(context.Background(), "library/app", tag, ocispec.MediaTypeImageIndex, referrersIndex(t, sig)); err != nil {
		t.Fatal(err)
	}
	if got := upstream.ReferrersTag(img.ManifestDigest); got != tag {
		t.Fatalf("ReferrersTag %q, want %q", got, tag)
	}

	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx, sig)

	r, idx = h.getReferrers(t, "library/app", bare.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("subject without referrers: %d %s", r.status, r.body)
	}
	wantListed(t, idx)
}

// TestReferrersArtifactType: regnorm applies the artifactType filter
// itself, on the whole list it cached, and says so (OCI-Filters-Applied);
// the upstream is never asked for a filtered list.
func TestReferrersArtifactType(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	_, filtered := withReferrersAPI(t, h, map[string][]referrer{"/v2/library/app/referrers/" + img.ManifestDigest.String(): {sig, sbom}})

	tests := []struct {
		query string
		want  []referrer
	}{
		{"?artifactType=" + url.QueryEscape(sbomType), []referrer{sbom}},
		{"?artifactType=" + url.QueryEscape(sigType), []referrer{sig}},
		{"?artifactType=application/vnd.example.none", nil},
	}
	for _, tt := range tests {
		r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, tt.query, nil)
		if r.status != http.StatusOK {
			t.Fatalf("%s: %d %s", tt.query, r.status, r.body)
		}
		wantListed(t, idx, tt.want...)
		if got := r.header.Get("OCI-Filters-Applied"); got != "artifactType" {
			t.Errorf("%s: OCI-Filters-Applied %q, want artifactType", tt.query, got)
		}
	}
	if n := filtered.Load(); n != 0 {
		t.Errorf("upstream asked %d times for a filtered list", n)
	}
}

// TestReferrersAdmission: a client learns the referrers of a subject only
// in a repository where it may read that subject: not by naming another
// repository (whose upstream answer or record is not the subject's), and,
// with forwarded credentials, not from a list cached for another client
// when the upstream refuses its own.
func TestReferrersAdmission(t *testing.T) {
	t.Parallel()
	t.Run("another repository", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{tagTTL: time.Hour})
		img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		h.push(t, "library/other", "v1", regtest.ImageOptions{Entrypoint: []string{"/other"}}, oneFile)
		sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
		// A careless upstream that answers the subject's list under any
		// repository.
		requests, _ := withReferrersAPI(t, h, map[string][]referrer{
			"/v2/library/app/referrers/" + img.ManifestDigest.String():   {sig},
			"/v2/library/other/referrers/" + img.ManifestDigest.String(): {sig},
		})
		if r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil); r.status != http.StatusOK {
			t.Fatalf("own repository: %d %s", r.status, r.body)
		}
		r, _ := h.getReferrers(t, "library/other", img.ManifestDigest, "", nil)
		if r.status != http.StatusNotFound || r.ociError(t) != errcode.ManifestUnknown {
			t.Fatalf("another repository: %d %s, want 404 MANIFEST_UNKNOWN", r.status, r.body)
		}
		if bytes.Contains(r.body, []byte(sig.desc.Digest.Encoded())) {
			t.Fatalf("the refusal names the referrer: %s", r.body)
		}
		if got := requests.Load(); got != 1 {
			t.Errorf("upstream asked %d times for a list, want once (the other repository's never)", got)
		}
	})
	t.Run("another upstream", func(t *testing.T) {
		t.Parallel()
		other := regtest.Start(t, regtest.Options{})
		otherURL, _ := url.Parse(other.URL)
		h := newHarness(t, harnessOptions{tagTTL: time.Hour, more: []upstream.Config{{Name: "quay.io", URL: otherURL}}})
		img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
		withReferrersAPI(t, h, map[string][]referrer{"/v2/library/app/referrers/" + img.ManifestDigest.String(): {sig}})
		if r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil); r.status != http.StatusOK {
			t.Fatalf("docker.io: %d %s", r.status, r.body)
		}
		r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "?ns=quay.io", nil)
		if r.status != http.StatusNotFound || r.ociError(t) != errcode.ManifestUnknown {
			t.Fatalf("quay.io, which lacks the subject: %d %s, want 404 MANIFEST_UNKNOWN", r.status, r.body)
		}
	})
	t.Run("forwarded credentials", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{
			registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
				{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private"}},
				{Username: "bob", Password: "bob-secret-pw", Repos: []string{"team/shared"}},
			}},
			forward: true,
			tagTTL:  time.Hour,
		})
		img := h.push(t, "team/private", "v1", regtest.ImageOptions{}, oneFile)
		sig := h.pushReferrer(t, "team/private", subjectOf(img), sigType, "signature")
		if err := h.reg.Client().PushManifest(context.Background(), "team/private", upstream.ReferrersTag(img.ManifestDigest), ocispec.MediaTypeImageIndex, referrersIndex(t, sig)); err != nil {
			t.Fatal(err)
		}
		r, idx := h.getReferrers(t, "team/private", img.ManifestDigest, "", basic("alice", "alice-secret-pw"))
		if r.status != http.StatusOK {
			t.Fatalf("alice: %d %s", r.status, r.body)
		}
		wantListed(t, idx, sig)
		for name, header := range map[string]http.Header{
			"bob":              basic("bob", "bob-secret-pw"),
			"a wrong password": basic("alice", "guess"),
			"no credentials":   containerdAccept,
		} {
			r, _ := h.getReferrers(t, "team/private", img.ManifestDigest, "", header)
			if r.status == http.StatusOK || bytes.Contains(r.body, []byte(sig.desc.Digest.Encoded())) {
				t.Fatalf("%s: %d %s: the list cached for alice", name, r.status, r.body)
			}
		}
	})
}

// TestReferrersBounded: a hostile upstream's list is refused, whole, with
// an OCI error that says why, and nothing of it is cached: more
// descriptors than regnorm serves, more bytes than a manifest may have,
// descriptors that are not, or a next page that points elsewhere.
func TestReferrersBounded(t *testing.T) {
	t.Parallel()
	descriptors := func(n int) []byte {
		var b bytes.Buffer
		b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":2}`, digest.FromString(fmt.Sprint(i)))
		}
		b.WriteString(`]}`)
		return b.Bytes()
	}
	tests := []struct {
		name        string
		body        []byte
		link        string
		wantMessage string
	}{
		{name: "too many descriptors", body: descriptors(mediatype.MaxReferrers + 1), wantMessage: "more than 1000 referrers"},
		{name: "descriptors by the ten thousand, past the size of a manifest", body: descriptors(50_000), wantMessage: "larger than"},
		{name: "an empty descriptor", body: []byte(`{"manifests":[{}]}`), wantMessage: "not an index of valid descriptors"},
		{name: "larger than a manifest", body: []byte(`{"manifests":[],"x":"` + strings.Repeat("x", mediatype.MaxManifestSize) + `"}`), wantMessage: "larger than"},
		{name: "not an index", body: []byte(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`), wantMessage: "not an index of valid"},
		{name: "bad digest", body: []byte(`{"manifests":[{"mediaType":"a/b","digest":"sha256:nope","size":1}]}`), wantMessage: "not an index"},
		{name: "a next page elsewhere", body: descriptors(1), link: `<http://elsewhere.example/v2/x/referrers/sha256:0?p=2>; rel="next"`, wantMessage: "does not follow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{tagTTL: time.Hour})
			img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if !strings.Contains(r.URL.Path, "/referrers/") {
					h.front.relay(w, r)
					return
				}
				if tt.link != "" {
					w.Header().Set("Link", tt.link)
				}
				w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
				w.Write(tt.body)
			})
			r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
			if r.status != http.StatusBadGateway || r.ociError(t) != errcode.ManifestInvalid || !strings.Contains(string(r.body), tt.wantMessage) {
				t.Fatalf("%d %s, want 502 MANIFEST_INVALID saying %q", r.status, r.body, tt.wantMessage)
			}
			if _, err := h.store.GetReferrers(context.Background(), "docker.io", "library/app", img.ManifestDigest); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("a record of the refused list: %v", err)
			}
		})
	}
}

// TestReferrersPages: a list the upstream pages is followed to its end,
// within the bounds, and answered whole.
func TestReferrersPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	path := "/v2/library/app/referrers/" + img.ManifestDigest.String()
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		if r.URL.Query().Get("page") == "2" {
			w.Write(referrersIndex(t, sbom))
			return
		}
		w.Header().Set("Link", "<"+path+`?page=2>; rel="next"`)
		w.Write(referrersIndex(t, sig))
	})
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx, sig, sbom)
}

// TestReferrersStale: past the tag TTL, a list the upstream cannot
// refresh is served from its record, marked stale; without a record, the
// upstream's failure is the answer.
func TestReferrersStale(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	h := newHarness(t, harnessOptions{tagTTL: time.Minute, clock: clock})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	cold := h.push(t, "library/cold", "v1", regtest.ImageOptions{Entrypoint: []string{"/cold"}}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	withReferrersAPI(t, h, map[string][]referrer{"/v2/library/app/referrers/" + img.ManifestDigest.String(): {sig}})
	if r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil); r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// The subject of library/cold is known to regnorm too, its list is not.
	if r := h.do(t, http.MethodGet, "/v2/library/cold/manifests/"+cold.ManifestDigest.String(), containerdAccept); r.status != http.StatusOK {
		t.Fatalf("cold subject: %d", r.status)
	}
	h.front.set(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	clock.Advance(2 * time.Minute)

	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("upstream down: %d %s, want the stale list", r.status, r.body)
	}
	wantListed(t, idx, sig)
	if got := r.header.Get("Warning"); got != staleWarning {
		t.Errorf("Warning %q, want %q", got, staleWarning)
	}
	if got := h.metric(t, "regnorm_stale_serves_total", `upstream="docker.io"`); got != 1 {
		t.Errorf("stale serves %v, want 1", got)
	}
	r, _ = h.getReferrers(t, "library/cold", cold.ManifestDigest, "", nil)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("no record, upstream down: %d %s, want 503", r.status, r.body)
	}
}

// TestReferrersOfAVariant: a variant regnorm made has no referrers
// upstream: without attestations (this harness makes none unless asked;
// TestVariantAttestation lists one) it has none, an empty index, asked of
// no upstream.
func TestReferrersOfAVariant(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	// An octet-stream config: the config media type rule makes a variant
	// for every containerd since 1.4, and for a client that names none.
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	if r.status != http.StatusOK || variant == img.ManifestDigest {
		t.Fatalf("no variant: %d %s", r.status, variant)
	}
	requests, _ := withReferrersAPI(t, h, nil)
	r, idx := h.getReferrers(t, "library/app", variant, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx)
	if n := requests.Load(); n != 0 {
		t.Errorf("upstream asked %d times for a variant's referrers", n)
	}
}

// TestReferrersSignaturesServedAsTheyAre: the signature and attestation
// manifests a list names, and cosign's .sig tag, are served under their
// upstream digest to every client, whatever rules its User-Agent gets:
// no rule rewrites them (their digest is what a signature verifies).
func TestReferrersSignaturesServedAsTheyAre(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	// cosign's classic signature image: an OCI image config whose diff
	// IDs are its simplesigning layers' digests.
	payload := []byte(`{"critical":{"identity":{"docker-reference":"x"},"image":{"docker-manifest-digest":"` + img.ManifestDigest.String() + `"},"type":"cosign container image signature"},"optional":null}`)
	layer := ocispec.Descriptor{MediaType: "application/vnd.dev.cosign.simplesigning.v1+json", Digest: digest.FromBytes(payload), Size: int64(len(payload)),
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": "MEUCIQ=="}}
	config := []byte(`{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["` + layer.Digest.String() + `"]},"config":{}}`)
	h.pushBlob(t, "library/app", payload)
	h.pushBlob(t, "library/app", config)
	sigManifest, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers: []ocispec.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	sigTag := upstream.ReferrersTag(img.ManifestDigest) + ".sig"
	if err := h.reg.Client().PushManifest(context.Background(), "library/app", sigTag, ocispec.MediaTypeImageManifest, sigManifest); err != nil {
		t.Fatal(err)
	}
	// An attestation in the referrers scheme (cosign 3's bundle).
	att := h.pushReferrer(t, "library/app", subjectOf(img), "application/vnd.dev.sigstore.bundle.v0.3+json", `{"dsseEnvelope":{}}`)

	for _, ua := range []string{"containerd/1.6.8", "containerd/1.6.20", "containerd/v2.3.4", "crane/0.20"} {
		header := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {ua}}
		for _, tt := range []struct {
			ref  string
			want []byte
		}{
			{sigTag, sigManifest},
			{digest.FromBytes(sigManifest).String(), sigManifest},
			{att.desc.Digest.String(), att.content},
		} {
			r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+tt.ref, header)
			if r.status != http.StatusOK || !bytes.Equal(r.body, tt.want) || r.header.Get("Docker-Content-Digest") != digest.FromBytes(tt.want).String() {
				t.Fatalf("%s, %s: %d %s, digest %s: not the upstream's bytes", ua, tt.ref, r.status, r.body, r.header.Get("Docker-Content-Digest"))
			}
		}
		for _, blob := range [][]byte{payload, config} {
			r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+digest.FromBytes(blob).String(), header)
			if r.status != http.StatusOK || !bytes.Equal(r.body, blob) {
				t.Fatalf("%s, blob %s: %d", ua, digest.FromBytes(blob), r.status)
			}
		}
	}
}

// TestReferrersVerdictsRemembered: a refresh reads again none of the
// manifests the last one checked, kept or refused (a digest's verdict
// holds), neither upstream nor from the cache: only the new ones. The
// list is still the upstream's newest.
func TestReferrersVerdictsRemembered(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	reads := &manifestReads{StorageDriver: inmemory.New()}
	h := newHarness(t, harnessOptions{tagTTL: time.Minute, clock: clock, store: cache.New(reads)})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	other := h.push(t, "library/app", "v2", regtest.ImageOptions{Entrypoint: []string{"/other"}}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	ofOther := h.pushReferrer(t, "library/app", subjectOf(other), sigType, "the other's signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	path := "/v2/library/app/referrers/" + img.ManifestDigest.String()
	var lists atomic.Pointer[[]referrer]
	lists.Store(&[]referrer{sig, ofOther})
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Write(referrersIndex(t, *lists.Load()...))
			return
		}
		if strings.Contains(r.URL.Path, "/manifests/sha256:") {
			reads.count(strings.TrimPrefix(r.URL.Path[strings.LastIndex(r.URL.Path, "/"):], "/sha256:"))
		}
		h.front.relay(w, r)
	})
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx, sig)
	if reads.of(sig) == 0 || reads.of(ofOther) == 0 {
		t.Fatalf("first list: manifests read %d and %d times, want each checked", reads.of(sig), reads.of(ofOther))
	}
	before := [3]int64{reads.of(sig), reads.of(ofOther), reads.of(sbom)}
	lists.Store(&[]referrer{sig, ofOther, sbom})
	clock.Advance(2 * time.Minute)
	r, idx = h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("refreshed: %d %s", r.status, r.body)
	}
	wantListed(t, idx, sig, sbom)
	if got := [3]int64{reads.of(sig), reads.of(ofOther), reads.of(sbom)}; got[0] != before[0] || got[1] != before[1] || got[2] == before[2] {
		t.Fatalf("refresh: manifests read %v times, were %v: want the first two not read again, the new one read", got, before)
	}
}

// manifestReads is a storage driver that counts the reads of cached
// manifests, by encoded digest, and the upstream's that count calls.
type manifestReads struct {
	storagedriver.StorageDriver
	n sync.Map // encoded digest -> *atomic.Int64
}

func (d *manifestReads) count(encoded string) {
	n, _ := d.n.LoadOrStore(encoded, &atomic.Int64{})
	n.(*atomic.Int64).Add(1)
}

func (d *manifestReads) of(r referrer) int64 {
	n, ok := d.n.Load(r.desc.Digest.Encoded())
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

func (d *manifestReads) GetContent(ctx context.Context, p string) ([]byte, error) {
	if strings.HasPrefix(p, "/manifests/") {
		d.count(p[strings.LastIndex(p, "/")+1:])
	}
	return d.StorageDriver.GetContent(ctx, p)
}

func (d *manifestReads) Reader(ctx context.Context, p string, offset int64) (io.ReadCloser, error) {
	if strings.HasPrefix(p, "/manifests/") {
		d.count(p[strings.LastIndex(p, "/")+1:])
	}
	return d.StorageDriver.Reader(ctx, p, offset)
}

// TestReferrersListedOnce: pages that overlap (a registry paging a list
// that changes under it) list a descriptor once, where it came first.
func TestReferrersListedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	path := "/v2/library/app/referrers/" + img.ManifestDigest.String()
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		if r.URL.Query().Get("page") == "2" {
			w.Write(referrersIndex(t, sig, sbom))
			return
		}
		w.Header().Set("Link", "<"+path+`?page=2>; rel="next"`)
		w.Write(referrersIndex(t, sig, sig))
	})
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx, sig, sbom)
}

// TestReferrersNoAPIStatuses: an upstream that answers the referrers
// route with 405 or 501 has no referrers API, like one that answers 404
// (the spec's word), and its tag schema is read; a 400 is the API
// refusing the request, and is the client's answer, with no fallback.
func TestReferrersNoAPIStatuses(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status   int
		fallback bool
	}{{http.StatusNotFound, true}, {http.StatusMethodNotAllowed, true}, {http.StatusNotImplemented, true}, {http.StatusBadRequest, false}} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{tagTTL: time.Hour})
			img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
			sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
			if err := h.reg.Client().PushManifest(context.Background(), "library/app", upstream.ReferrersTag(img.ManifestDigest), ocispec.MediaTypeImageIndex, referrersIndex(t, sig)); err != nil {
				t.Fatal(err)
			}
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/referrers/") {
					http.Error(w, "no such route", tt.status)
					return
				}
				h.front.relay(w, r)
			})
			r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
			switch {
			case tt.fallback && r.status != http.StatusOK:
				t.Fatalf("%d %s, want the tag schema's list", r.status, r.body)
			case tt.fallback:
				wantListed(t, idx, sig)
			case r.status == http.StatusOK:
				t.Fatalf("%d %s: fell back to the tag schema on a %d", r.status, r.body, tt.status)
			}
		})
	}
}

// TestReferrersTagSchemaInvalidIndex: an index under the referrers tag
// whose descriptors are not valid is not "a valid image index" either:
// no referrers (the spec's SHOULD), as for a tag that holds an image
// (TestReferrersTagSchemaNotAnIndex).
func TestReferrersTagSchemaInvalidIndex(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	// Served by the front: the registry takes no such index.
	bad := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"","digest":"sha256:nope","size":-1}]}`)
	tag := "/v2/library/app/manifests/" + upstream.ReferrersTag(img.ManifestDigest)
	var served atomic.Int64
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != tag {
			h.front.relay(w, r)
			return
		}
		served.Add(1)
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(bad).String())
		w.Write(bad)
	})
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s, want 200 and an empty index", r.status, r.body)
	}
	wantListed(t, idx)
	if served.Load() == 0 {
		t.Fatal("the tag was never asked for")
	}
}
