package cosign_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/cosign"
)

// The digests cosign signed in testdata (README.md).
const (
	bundled = digest.Digest("sha256:b6bd445efa456959cb31e76f57d3db8e0ee7edb5ca56b3c8d4f9ac089cd98d85")
	classic = digest.Digest("sha256:798335db4f80beb9cb909308eee5327cf452cf9e248337df57e7d16e0feca24a")
)

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vendorKey(t *testing.T) any {
	t.Helper()
	key, err := cosign.ParsePublicKey(read(t, "vendor.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func otherKey(t *testing.T) any {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	key, err := cosign.ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestSimpleSigning: cosign v3's classic signature (--new-bundle-format=
// false) verifies with its key for the digest it names; another key, a
// byte of the payload changed, a payload naming another digest (a
// signature copied from another image), a payload of another type, and a
// signature that is not base64 fail, each with its reason.
func TestSimpleSigning(t *testing.T) {
	t.Parallel()
	payload, sig := read(t, "simplesigning.json"), string(read(t, "simplesigning.sig"))
	key := vendorKey(t)
	if err := cosign.VerifySimpleSigning(payload, sig, key, classic); err != nil {
		t.Fatalf("cosign's own signature: %v", err)
	}
	changed := bytes.Replace(payload, []byte(`"optional":null`), []byte(`"optional":{} `), 1)
	for _, tt := range []struct {
		name    string
		payload []byte
		sig     string
		key     any
		dgst    digest.Digest
		want    error
		wantMsg string
	}{
		{"another key", payload, sig, otherKey(t), classic, cosign.ErrBadSignature, ""},
		{"a byte changed", changed, sig, key, classic, cosign.ErrBadSignature, ""},
		{"another digest asked", payload, sig, key, bundled, cosign.ErrOtherDigest, "names \"" + classic.String() + "\""},
		{"not base64", payload, "%%%", key, classic, cosign.ErrBadSignature, "not base64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := cosign.VerifySimpleSigning(tt.payload, tt.sig, tt.key, tt.dgst)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want %v (%q)", err, tt.want, tt.wantMsg)
			}
		})
	}
}

// TestSimpleSigningPayloads: a payload signed by the key but of another
// type, not JSON, or naming no digest is refused after its signature
// verified; one that names the digest passes.
func TestSimpleSigningPayloads(t *testing.T) {
	t.Parallel()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(p string) string {
		s, err := signECDSA(k, []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tt := range []struct{ name, payload, want string }{
		{"another type", `{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"` + classic.String() + `"},"type":"atomic container signature"},"optional":null}`, "of type"},
		{"not JSON", `not json`, "not a simple-signing payload"},
		{"no digest", `{"critical":{"type":"cosign container image signature"}}`, "names \"\""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := cosign.VerifySimpleSigning([]byte(tt.payload), sign(tt.payload), k.Public(), classic)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	ok := `{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"` + classic.String() + `"},"type":"cosign container image signature"},"optional":null}`
	if err := cosign.VerifySimpleSigning([]byte(ok), sign(ok), k.Public(), classic); err != nil {
		t.Fatalf("a payload signed here: %v", err)
	}
}

// TestBundle: cosign v3's default signature (a bundle of a DSSE envelope
// of a sign/v1 statement) verifies with its key for the digest it names,
// and gives back the statement; another key, a byte of the statement
// changed, a signature byte changed, another digest asked, another
// predicate type asked, a bundle of another media type, one without
// signatures, and one with a message signature instead of an envelope
// fail.
func TestBundle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := read(t, "bundle.json")
	key := vendorKey(t)
	st, err := cosign.VerifyBundle(ctx, b, key, cosign.PredicateTypeSign, bundled)
	if err != nil {
		t.Fatalf("cosign's own bundle: %v", err)
	}
	if !bytes.Contains(st, []byte(bundled.Encoded())) {
		t.Fatalf("statement %s", st)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	env := func(m map[string]any) map[string]any { return m["dsseEnvelope"].(map[string]any) }
	changedPayload := edit(func(m map[string]any) {
		p, _ := base64.StdEncoding.DecodeString(env(m)["payload"].(string))
		env(m)["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(p, []byte(`"predicate":{}`), []byte(`"predicate":{"a":1}`), 1))
	})
	changedSig := edit(func(m map[string]any) {
		s := env(m)["signatures"].([]any)[0].(map[string]any)
		raw, _ := base64.StdEncoding.DecodeString(s["sig"].(string))
		raw[len(raw)-1] ^= 1
		s["sig"] = base64.StdEncoding.EncodeToString(raw)
	})
	for _, tt := range []struct {
		name          string
		bundle        []byte
		key           any
		predicateType string
		dgst          digest.Digest
		want          error
		wantMsg       string
	}{
		{"another key", b, otherKey(t), cosign.PredicateTypeSign, bundled, cosign.ErrBadSignature, ""},
		{"a byte of the statement changed", changedPayload, key, cosign.PredicateTypeSign, bundled, cosign.ErrBadSignature, ""},
		{"a byte of the signature changed", changedSig, key, cosign.PredicateTypeSign, bundled, cosign.ErrBadSignature, ""},
		{"another digest asked", b, key, cosign.PredicateTypeSign, classic, cosign.ErrOtherDigest, "subjects are [" + bundled.String() + "]"},
		{"another predicate type", b, key, "https://slsa.dev/provenance/v1", bundled, nil, "predicate type"},
		{"another media type", edit(func(m map[string]any) { m["mediaType"] = "application/vnd.dev.sigstore.bundle.v9+json" }), key, cosign.PredicateTypeSign, bundled, nil, "media type"},
		{"no signatures", edit(func(m map[string]any) { env(m)["signatures"] = []any{} }), key, cosign.PredicateTypeSign, bundled, cosign.ErrBadSignature, "no signature"},
		{"a message signature", edit(func(m map[string]any) {
			delete(m, "dsseEnvelope")
			m["messageSignature"] = map[string]any{"signature": "AAAA"}
		}), key, cosign.PredicateTypeSign, bundled, nil, "without a DSSE envelope"},
		{"not a bundle", []byte(`{"mediaType": 3}`), key, cosign.PredicateTypeSign, bundled, nil, "not a sigstore bundle"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := cosign.VerifyBundle(ctx, tt.bundle, tt.key, tt.predicateType, tt.dgst)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want %v (%q)", err, tt.want, tt.wantMsg)
			}
		})
	}
}

// TestKeyHint: the hint of the key is what cosign wrote in its bundle.
func TestKeyHint(t *testing.T) {
	t.Parallel()
	var b struct {
		VerificationMaterial struct {
			PublicKey struct {
				Hint string `json:"hint"`
			} `json:"publicKey"`
		} `json:"verificationMaterial"`
	}
	if err := json.Unmarshal(read(t, "bundle.json"), &b); err != nil {
		t.Fatal(err)
	}
	got, err := cosign.KeyHint(vendorKey(t))
	if err != nil || got != b.VerificationMaterial.PublicKey.Hint {
		t.Fatalf("hint %q (%v), cosign wrote %q", got, err, b.VerificationMaterial.PublicKey.Hint)
	}
}

// TestSignatureTag is cosign's tag scheme.
func TestSignatureTag(t *testing.T) {
	t.Parallel()
	if got := cosign.SignatureTag(classic); got != "sha256-"+classic.Encoded()+".sig" {
		t.Fatal(got)
	}
}
