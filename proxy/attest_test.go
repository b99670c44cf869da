package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/attest"
)

// TestVariantAttestation: a variant regnorm made is attested in the
// repository that served it: its referrers list the attestation (an OCI
// image manifest whose subject is the variant), cosign's tag
// sha256-<hex>.att serves the same manifest, and its envelope blob is a
// DSSE envelope, signed with the configured key, of a statement whose
// subject is the variant and whose predicate names the original; its
// second referrer is cosign v3's bundle of the same envelope, which
// verifies with the key as the same statement. With
// forwarded credentials, a client the upstream does not let read the
// original's repository reads none of it (tag, referrers, manifest,
// blobs), and the original's referrers are still the upstream's.
func TestVariantAttestation(t *testing.T) {
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
	// An octet-stream config: the config media type rule makes a variant.
	img := h.push(t, "team/private", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	shared := h.push(t, "team/shared", "v1", regtest.ImageOptions{}, oneFile)
	alice, bob := basic("alice", "alice-secret-pw"), basic("bob", "bob-secret-pw")
	withAuth := func(header http.Header) http.Header {
		out := header.Clone()
		for k, v := range containerdAccept {
			out[k] = v
		}
		return out
	}

	r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", withAuth(alice))
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	if r.status != http.StatusOK || variant == img.ManifestDigest {
		t.Fatalf("no variant: %d %s", r.status, variant)
	}

	r, idx := h.getReferrers(t, "team/private", variant, "", alice)
	if r.status != http.StatusOK || len(idx.Manifests) != 2 {
		t.Fatalf("referrers of the variant: %d %s", r.status, r.body)
	}
	listed, bundled := idx.Manifests[0], idx.Manifests[1]
	if listed.ArtifactType != attest.MediaTypeEnvelope || listed.MediaType != ocispec.MediaTypeImageManifest ||
		bundled.ArtifactType != cosign.MediaTypeBundle || bundled.MediaType != ocispec.MediaTypeImageManifest {
		t.Fatalf("listed %+v", idx.Manifests)
	}
	r, filtered := h.getReferrers(t, "team/private", variant, "?artifactType=application/vnd.dev.sigstore.bundle.v0.3%2Bjson", alice)
	if r.status != http.StatusOK || len(filtered.Manifests) != 1 || filtered.Manifests[0].Digest != bundled.Digest {
		t.Fatalf("referrers of the bundle's type: %d %s", r.status, r.body)
	}

	tagPath := "/v2/team/private/manifests/" + attest.TagOf(variant)
	r = h.do(t, http.MethodGet, tagPath, withAuth(alice))
	if r.status != http.StatusOK || digest.FromBytes(r.body) != listed.Digest || r.header.Get("Docker-Content-Digest") != listed.Digest.String() {
		t.Fatalf("the .att tag: %d %s, want %s", r.status, r.header.Get("Docker-Content-Digest"), listed.Digest)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(r.body, &m); err != nil || m.Subject == nil || m.Subject.Digest != variant || len(m.Layers) != 1 {
		t.Fatalf("attestation manifest %s (%v)", r.body, err)
	}
	manifestPath := "/v2/team/private/manifests/" + listed.Digest.String()
	if r := h.do(t, http.MethodGet, manifestPath, withAuth(alice)); r.status != http.StatusOK || digest.FromBytes(r.body) != listed.Digest {
		t.Fatalf("the attestation by digest: %d", r.status)
	}
	envPath := "/v2/team/private/blobs/" + m.Layers[0].Digest.String()
	configPath := "/v2/team/private/blobs/" + m.Config.Digest.String()
	r = h.do(t, http.MethodGet, envPath, alice)
	if r.status != http.StatusOK || digest.FromBytes(r.body) != m.Layers[0].Digest {
		t.Fatalf("the envelope: %d", r.status)
	}
	statement, err := attest.Verify(context.Background(), r.body, &key.PublicKey)
	if err != nil {
		t.Fatalf("the envelope does not verify with the key: %v", err)
	}
	var st attest.Statement
	if err := json.Unmarshal(statement, &st); err != nil {
		t.Fatal(err)
	}
	if st.Subject[0].Name != "team/private" || st.Subject[0].Digest["sha256"] != variant.Encoded() ||
		st.Predicate.Original.Digest != img.ManifestDigest || st.Predicate.Upstream != "docker.io" ||
		st.Predicate.Regnorm.Version != "v0.test" || len(st.Predicate.Changes) == 0 || st.Predicate.Rules == "" {
		t.Errorf("statement %s", statement)
	}
	if r := h.do(t, http.MethodGet, configPath, alice); r.status != http.StatusOK || digest.FromBytes(r.body) != m.Config.Digest {
		t.Fatalf("the config: %d", r.status)
	}

	// cosign v3's bundle of the same envelope: its manifest by digest, a
	// subject the variant and one layer, the bundle, which verifies with
	// the key as the same statement.
	bundlePath := "/v2/team/private/manifests/" + bundled.Digest.String()
	r = h.do(t, http.MethodGet, bundlePath, withAuth(alice))
	var bm ocispec.Manifest
	if r.status != http.StatusOK || digest.FromBytes(r.body) != bundled.Digest || json.Unmarshal(r.body, &bm) != nil ||
		bm.Subject == nil || bm.Subject.Digest != variant || len(bm.Layers) != 1 || bm.Layers[0].MediaType != cosign.MediaTypeBundle {
		t.Fatalf("the bundle's manifest: %d %s", r.status, r.body)
	}
	bundleBlobPath := "/v2/team/private/blobs/" + bm.Layers[0].Digest.String()
	r = h.do(t, http.MethodGet, bundleBlobPath, alice)
	if r.status != http.StatusOK || digest.FromBytes(r.body) != bm.Layers[0].Digest {
		t.Fatalf("the bundle: %d", r.status)
	}
	if got, err := cosign.VerifyBundle(context.Background(), r.body, &key.PublicKey, attest.PredicateType, variant); err != nil || string(got) != string(statement) {
		t.Fatalf("the bundle does not verify as the same statement: %v\n%s", err, got)
	}

	// Bob may not read team/private: nothing of the attestation, in it or
	// under his own repository.
	for _, path := range []string{tagPath, manifestPath, envPath, configPath, bundlePath, bundleBlobPath,
		"/v2/team/private/referrers/" + variant.String(),
		"/v2/team/shared/manifests/" + bundled.Digest.String(),
		"/v2/team/shared/manifests/" + attest.TagOf(variant),
		"/v2/team/shared/manifests/" + listed.Digest.String(),
		"/v2/team/shared/blobs/" + m.Layers[0].Digest.String()} {
		if r := h.do(t, http.MethodGet, path, withAuth(bob)); r.status == http.StatusOK || strings.Contains(string(r.body), "dsse") {
			t.Errorf("bob read %s: %d %s", path, r.status, r.body)
		}
	}
	// team/shared's own image is, byte for byte, the variant: its
	// referrers are team/shared's upstream's, which bob may read, and list
	// nothing of the attestation regnorm made in team/private.
	if shared.ManifestDigest != variant {
		t.Fatalf("team/shared's image %s is not the variant %s: the test's premise broke", shared.ManifestDigest, variant)
	}
	if r := h.do(t, http.MethodGet, "/v2/team/shared/referrers/"+variant.String(), withAuth(bob)); r.status != http.StatusOK ||
		strings.Contains(string(r.body), "dsse") || strings.Contains(string(r.body), listed.Digest.Encoded()) {
		t.Errorf("bob's referrers of team/shared's own image: %d %s", r.status, r.body)
	}
	// The same in a repository alice may read but that does not hold the
	// original.
	for _, path := range []string{"/v2/team/shared/manifests/" + attest.TagOf(variant), "/v2/team/shared/blobs/" + m.Layers[0].Digest.String()} {
		if r := h.do(t, http.MethodGet, path, withAuth(alice)); r.status == http.StatusOK {
			t.Errorf("alice read %s in a repository without the original: %d", path, r.status)
		}
	}
}

// TestUnsignedAttestation: without a key, a variant's attestation is an
// envelope with no signatures, listed and served all the same; a second
// pull lists the same one, once.
func TestUnsignedAttestation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, attest: &attest.Maker{Version: "v0.test"}})
	h.push(t, "library/app", "v1", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, oneFile)
	r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
	r = h.do(t, http.MethodGet, "/v2/library/app/manifests/"+attest.TagOf(variant), containerdAccept)
	if r.status != http.StatusOK {
		t.Fatalf("the .att tag: %d %s", r.status, r.body)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(r.body, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("%s (%v)", r.body, err)
	}
	env := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+m.Layers[0].Digest.String(), nil)
	var e struct {
		PayloadType string            `json:"payloadType"`
		Signatures  []json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(env.body, &e); err != nil || e.PayloadType != attest.PayloadType || e.Signatures == nil || len(e.Signatures) != 0 {
		t.Fatalf("unsigned envelope %s (%v)", env.body, err)
	}
	// Pulled again: the same attestation, listed once.
	h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	_, idx := h.getReferrers(t, "library/app", variant, "", nil)
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(r.body) {
		t.Fatalf("referrers %+v, want the one attestation %s", idx.Manifests, digest.FromBytes(r.body))
	}
}
