package proxy_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

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
