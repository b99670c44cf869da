package proxy_test

import (
	"bytes"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Attacks on the referrers API (issue 25, part 1), from a review. Each
// test names the promise it holds regnorm to.

// TestReferrersNotFoundConfirmsNoCredentials: a referrers request answers
// nothing about whether the client's credentials may read the repository
// when the upstream says 404 to it (no referrers API) and 404 to the tag
// schema: a registry that hides what a client may not read answers just
// that. So it must not renew the client's confirmation: after the
// upstream stopped letting Alice read team/private, one referrers request a
// minute must not keep her reading its cached manifests (promise 2).
func TestReferrersNotFoundConfirmsNoCredentials(t *testing.T) {
	t.Parallel()
	for _, askReferrers := range []bool{false, true} {
		name := "no referrers request (the setup's control)"
		if askReferrers {
			name = "a referrers request before the confirmation ends"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			h := newHarness(t, harnessOptions{
				registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
					{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private"}},
				}},
				forward: true,
				tagTTL:  time.Hour,
				clock:   clock,
			})
			img := h.push(t, "team/private", "v1", regtest.ImageOptions{}, oneFile)
			alice := basic("alice", "alice-secret-pw")
			manifest := "/v2/team/private/manifests/" + img.ManifestDigest.String()
			if r := h.do(t, http.MethodGet, manifest, alice); r.status != http.StatusOK {
				t.Fatalf("alice, before: %d %s", r.status, r.body)
			}
			// Alice's access is withdrawn, by a registry that answers what
			// a client may not read as unknown (as GitHub's and GitLab's do).
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/v2/team/private/") {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					w.Write([]byte(`{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`))
					return
				}
				h.front.relay(w, r)
			})
			clock.Advance(50 * time.Second)
			if askReferrers {
				r, _ := h.getReferrers(t, "team/private", img.ManifestDigest, "", alice)
				t.Logf("referrers, after the withdrawal: %d %s", r.status, r.body)
			}
			// Past the minute the upstream's last yes (the manifest GET)
			// stands for.
			clock.Advance(20 * time.Second)
			if r := h.do(t, http.MethodGet, manifest, alice); r.status == http.StatusOK {
				t.Fatalf("alice, 70s after her last yes and after the upstream stopped answering her: %d, still served from the cache", r.status)
			}
		})
	}
}

// TestReferrersListOnlyTheSubjectsReferrers: the spec's referrers list
// names manifests "in the same <name> namespace with a subject field that
// specifies the value of <digest>", with the artifactType of that manifest.
// An upstream's list (or a tag schema index anyone who can push wrote) is a
// claim regnorm can check against the manifests it names; served as it is,
// a client gets descriptors no manifest backs: one of another subject, an
// image with no subject at all, an SBOM that calls itself a signature
// (promise 1).
func TestReferrersListOnlyTheSubjectsReferrers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	other := h.push(t, "library/app", "v2", regtest.ImageOptions{Entrypoint: []string{"/other"}}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	ofOther := h.pushReferrer(t, "library/app", subjectOf(other), sigType, "the other's signature")
	plain := referrer{desc: ocispec.Descriptor{MediaType: subjectOf(other).MediaType, Digest: other.ManifestDigest, Size: int64(len(other.Manifest)), ArtifactType: sigType}}
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	sbomAsSig := sbom
	sbomAsSig.desc.ArtifactType = sigType
	withReferrersAPI(t, h, map[string][]referrer{"/v2/library/app/referrers/" + img.ManifestDigest.String(): {sig, ofOther, plain, sbomAsSig}})

	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "?artifactType="+url.QueryEscape(sigType), nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for _, d := range idx.Manifests {
		switch d.Digest {
		case ofOther.desc.Digest:
			t.Errorf("listed %s, whose subject is %s", d.Digest, other.ManifestDigest)
		case plain.desc.Digest:
			t.Errorf("listed %s, an image with no subject", d.Digest)
		case sbom.desc.Digest:
			t.Errorf("listed %s as a %s: its manifest says %s", d.Digest, sigType, sbomType)
		}
	}
}

// TestReferrersTagSchemaNotAnIndex: where the referrers API answers 404
// and the tag schema's tag "does not return a valid image index, the
// client SHOULD assume there are no referrers" (distribution spec 1.1,
// Listing Referrers). regnorm answers as that client: an empty index, not
// a 502 that fails every verifier asking (cosign verify included) for a
// tag that merely looks like the schema's.
func TestReferrersTagSchemaNotAnIndex(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	// An image pushed under the tag the schema would use.
	h.push(t, "library/app", upstream.ReferrersTag(img.ManifestDigest), regtest.ImageOptions{Entrypoint: []string{"/unrelated"}}, oneFile)
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s, want 200 and an empty index", r.status, r.body)
	}
	wantListed(t, idx)
}

// TestReferrersRecordBounded: a referrers record is no larger than the
// upstream answer it keeps (promise 3: everything taken from an upstream
// into a record is bounded). The answer is encoded without HTML escapes
// (serveReferrers); the record is not, and grows sixfold for annotations
// of '<', '>' or '&': 3 MiB read becomes 18 MiB stored, and read whole
// from the storage on every cache hit.
func TestReferrersRecordBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sig.desc.Annotations = map[string]string{"org.example.note": strings.Repeat("<", 3<<20)}
	// As an upstream writes it: '<' as itself, not \u003c.
	body := bytes.ReplaceAll(referrersIndex(t, sig), []byte(`\u003c`), []byte("<"))
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Write(body)
	})
	if r, _ := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil); r.status != http.StatusOK {
		t.Fatalf("%d %.300s", r.status, r.body)
	}
	var records []string
	err := filepath.WalkDir(h.root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "/_referrers/") {
			records = append(records, p)
		}
		return err
	})
	if err != nil || len(records) != 1 {
		t.Fatalf("records %v, %v: want one", records, err)
	}
	fi, err := os.Stat(records[0])
	if err != nil {
		t.Fatal(err)
	}
	if limit := int64(len(body)) + 4<<10; fi.Size() > limit {
		t.Fatalf("record of %d bytes for an upstream answer of %d", fi.Size(), len(body))
	}
}

// TestReferrersPagesUnderAPathPrefix: an upstream configured with a path
// (https://host/prefix, which regnorm supports: every request goes to
// /prefix/v2/...) names its next page as /prefix/v2/<name>/referrers/...
// That is the same list, and must be followed, not refused as "a next page
// regnorm does not follow" (502 for every paged list of such upstreams).
func TestReferrersPagesUnderAPathPrefix(t *testing.T) {
	t.Parallel()
	var hp atomic.Pointer[harness]
	var pages atomic.Pointer[[2][]byte]
	prefixed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := hp.Load()
		if h == nil || !strings.HasPrefix(r.URL.Path, "/mirror/") {
			http.NotFound(w, r)
			return
		}
		if strings.Contains(r.URL.Path, "/referrers/") && pages.Load() != nil {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			if r.URL.Query().Get("page") == "2" {
				w.Write(pages.Load()[1])
				return
			}
			w.Header().Set("Link", "<"+r.URL.Path+`?page=2>; rel="next"`)
			w.Write(pages.Load()[0])
			return
		}
		target, _ := url.Parse(h.front.URL)
		rp := httputil.NewSingleHostReverseProxy(target)
		r2 := r.Clone(r.Context())
		r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/mirror")
		r2.URL.RawPath = ""
		rp.ServeHTTP(w, r2)
	}))
	t.Cleanup(prefixed.Close)
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, upstreamURL: prefixed.URL + "/mirror"})
	hp.Store(h)
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	sig := h.pushReferrer(t, "library/app", subjectOf(img), sigType, "signature")
	sbom := h.pushReferrer(t, "library/app", subjectOf(img), sbomType, "sbom")
	pages.Store(&[2][]byte{referrersIndex(t, sig), referrersIndex(t, sbom)})
	// The subject is readable through the prefix.
	if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+img.ManifestDigest.String(), containerdAccept); r.status != http.StatusOK {
		t.Fatalf("subject through the prefix: %d %s", r.status, r.body)
	}
	r, idx := h.getReferrers(t, "library/app", img.ManifestDigest, "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	wantListed(t, idx, sig, sbom)
}
