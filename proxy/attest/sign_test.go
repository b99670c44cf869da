package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/regnorm/regnorm/proxy/attest"
)

// pemKey is key as an unencrypted PKCS #8 PEM file, as openssl writes it.
func pemKey(t testing.TB, key crypto.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func keys(t testing.TB) map[string]crypto.PrivateKey {
	t.Helper()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]crypto.PrivateKey{"ecdsa-p256": ec, "ed25519": ed}
}

func signer(t testing.TB, key crypto.PrivateKey) *attest.Signer {
	t.Helper()
	parsed, err := attest.ParsePrivateKey(pemKey(t, key))
	if err != nil {
		t.Fatal(err)
	}
	s, err := attest.NewSigner(parsed)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSignVerifies: an envelope signed with a PEM key (ECDSA P-256,
// ed25519) verifies with its public key and gives back the statement;
// another key, a byte changed in the payload or in the signature, or a
// payload type changed, fail; the same statement and key make the same
// envelope (replicas agree).
func TestSignVerifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := attest.NewStatement(derivation())
	if err != nil {
		t.Fatal(err)
	}
	ks := keys(t)
	for name, key := range ks {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := signer(t, key)
			env, err := s.Envelope(ctx, st)
			if err != nil {
				t.Fatal(err)
			}
			got, err := attest.Verify(ctx, env, s.Public())
			if err != nil || !bytes.Equal(got, st) {
				t.Fatalf("verify: %v; statement %s", err, got)
			}
			again, err := signer(t, key).Envelope(ctx, st)
			if err != nil || !bytes.Equal(again, env) {
				t.Errorf("a second envelope of the same statement differs (%v):\n%s\n%s", err, env, again)
			}
			for other, k := range ks {
				if other == name {
					continue
				}
				if _, err := attest.Verify(ctx, env, signer(t, k).Public()); err == nil {
					t.Errorf("verified with the %s key", other)
				}
			}
			var e ssldsse.Envelope
			if err := json.Unmarshal(env, &e); err != nil || len(e.Signatures) != 1 || e.PayloadType != "application/vnd.in-toto+json" {
				t.Fatalf("envelope %s (%v)", env, err)
			}
			for what, change := range map[string]func(e *ssldsse.Envelope){
				"payload": func(e *ssldsse.Envelope) {
					p, _ := base64.StdEncoding.DecodeString(e.Payload)
					p[len(p)/2] ^= 1
					e.Payload = base64.StdEncoding.EncodeToString(p)
				},
				"signature": func(e *ssldsse.Envelope) {
					sig, _ := base64.StdEncoding.DecodeString(e.Signatures[0].Sig)
					sig[len(sig)-1] ^= 1
					e.Signatures[0].Sig = base64.StdEncoding.EncodeToString(sig)
				},
			} {
				bad := e
				bad.Signatures = append([]ssldsse.Signature(nil), e.Signatures...)
				change(&bad)
				b, _ := json.Marshal(bad)
				if _, err := attest.Verify(ctx, b, s.Public()); err == nil {
					t.Errorf("a %s with a byte changed verified", what)
				}
			}
			bad := e
			bad.PayloadType = "text/plain"
			b, _ := json.Marshal(bad)
			if _, err := attest.Verify(ctx, b, s.Public()); err == nil {
				t.Error("another payload type verified")
			}
		})
	}
}

// TestUnsigned: without a key the envelope carries the statement and no
// signature, and Verify says so.
func TestUnsigned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _ := attest.NewStatement(derivation())
	var none *attest.Signer
	env, err := none.Envelope(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	var e ssldsse.Envelope
	if err := json.Unmarshal(env, &e); err != nil || e.Signatures == nil || len(e.Signatures) != 0 {
		t.Fatalf("envelope %s (%v)", env, err)
	}
	if p, err := e.DecodeB64Payload(); err != nil || !bytes.Equal(p, st) {
		t.Fatalf("payload %s (%v)", p, err)
	}
	if _, err := attest.Verify(ctx, env, signer(t, keys(t)["ed25519"]).Public()); !errors.Is(err, attest.ErrUnsigned) {
		t.Errorf("verify of an unsigned envelope: %v", err)
	}
}

// TestSignerRefusesKeys: keys other than ECDSA P-256 and ed25519, and
// files that are not keys, are refused when loaded.
func TestSignerRefusesKeys(t *testing.T) {
	t.Parallel()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, key := range map[string]crypto.PrivateKey{"p384": p384, "rsa": rsaKey} {
		parsed, err := attest.ParsePrivateKey(pemKey(t, key))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := attest.NewSigner(parsed); err == nil {
			t.Errorf("a %s key was taken", name)
		}
	}
	if _, err := attest.ParsePrivateKey([]byte("not a key")); err == nil {
		t.Error("garbage parsed as a key")
	}
	// What openssl writes: an encrypted key is named as such; an EC
	// PARAMETERS block before a SEC 1 key (ecparam -genkey) is skipped.
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	if _, err := attest.ParsePrivateKey(encrypted); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("an encrypted key: %v, want an error saying it is encrypted", err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	withParams := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...)
	if key, err := attest.ParsePrivateKey(withParams); err != nil {
		t.Errorf("openssl ecparam -genkey's output: %v", err)
	} else if _, err := attest.NewSigner(key); err != nil {
		t.Errorf("openssl ecparam -genkey's key does not sign: %v", err)
	}
}

// TestArtifact: the attestation's artifact is an OCI image manifest whose
// subject is the variant, with a config of its own and one DSSE envelope
// layer annotated with the predicate type, as cosign's classic
// attestations; its digests are its bytes'; the same input makes the
// same bytes.
func TestArtifact(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := derivation()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d.Variant.Digest, Size: 1234}
	m := &attest.Maker{Signer: signer(t, keys(t)["ecdsa-p256"]), Version: "v9"}
	a, err := m.Make(ctx, d, subject)
	if err != nil {
		t.Fatal(err)
	}
	var got ocispec.Manifest
	if err := json.Unmarshal(a.Manifest, &got); err != nil {
		t.Fatal(err)
	}
	if got.MediaType != ocispec.MediaTypeImageManifest || got.ArtifactType != attest.MediaTypeEnvelope ||
		got.Subject == nil || got.Subject.Digest != subject.Digest || got.Subject.Size != 1234 || got.Subject.MediaType != subject.MediaType {
		t.Errorf("manifest %s", a.Manifest)
	}
	if got.Config.Digest != a.ConfigDigest || got.Config.MediaType != attest.MediaTypeConfig || got.Config.Size != int64(len(a.Config)) ||
		!bytes.Contains(a.Config, []byte(d.Variant.Digest)) || len(got.Layers) != 1 ||
		got.Layers[0].Digest != a.EnvelopeDigest || got.Layers[0].MediaType != "application/vnd.dsse.envelope.v1+json" ||
		got.Layers[0].Annotations["predicateType"] != attest.PredicateType || got.Layers[0].Size != int64(len(a.Envelope)) {
		t.Errorf("manifest %s", a.Manifest)
	}
	st, err := attest.Verify(ctx, a.Envelope, m.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	var s attest.Statement
	if err := json.Unmarshal(st, &s); err != nil || s.Predicate.Regnorm.Version != "v9" {
		t.Errorf("statement %s (%v)", st, err)
	}
	b, err := m.Make(ctx, d, subject)
	if err != nil || !bytes.Equal(a.Manifest, b.Manifest) || a.Digest != b.Digest {
		t.Errorf("a second artifact differs: %s, %s (%v)", a.Digest, b.Digest, err)
	}
	if attest.TagOf(d.Variant.Digest) != "sha256-"+d.Variant.Digest.Encoded()+".att" {
		t.Error(attest.TagOf(d.Variant.Digest))
	}
	if _, err := m.Make(ctx, d, ocispec.Descriptor{Digest: d.Original.Digest}); err == nil {
		t.Error("made an attestation whose subject is not the variant")
	}
}

// TestPublicKeyAndPayload: a public key as openssl pkey -pubout writes it
// (PKIX PEM) verifies its private key's envelopes; one of another curve or
// algorithm, or a file that is no key, is refused; Payload reads the
// statement of a signed or unsigned envelope without checking, and refuses
// another payload type.
func TestPublicKeyAndPayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pubPEM := func(key crypto.PrivateKey) []byte {
		der, err := x509.MarshalPKIXPublicKey(key.(crypto.Signer).Public())
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	st, _ := attest.NewStatement(derivation())
	for name, key := range keys(t) {
		pub, err := attest.ParsePublicKey(pubPEM(key))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		env, err := signer(t, key).Envelope(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := attest.Verify(ctx, env, pub); err != nil || !bytes.Equal(got, st) {
			t.Errorf("%s: verify with the parsed public key: %v", name, err)
		}
		if got, err := attest.Payload(env); err != nil || !bytes.Equal(got, st) {
			t.Errorf("%s: payload %s, %v", name, got, err)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, b := range map[string][]byte{"p384": pubPEM(p384), "rsa": pubPEM(rsaKey), "not a key": []byte("hello")} {
		if _, err := attest.ParsePublicKey(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var none *attest.Signer
	env, _ := none.Envelope(ctx, st)
	if got, err := attest.Payload(env); err != nil || !bytes.Equal(got, st) {
		t.Errorf("unsigned: payload %s, %v", got, err)
	}
	other := bytes.Replace(env, []byte(attest.PayloadType), []byte("text/plain"), 1)
	if _, err := attest.Payload(other); err == nil {
		t.Error("Payload read another payload type")
	}
}
