package cosign_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/regnorm/regnorm/internal/cosign"
)

// FuzzVerifyBundle: whatever bundle a registry sends, VerifyBundle never
// panics, and what it accepts is a statement, signed by the key, whose
// subjects name the digest asked and whose predicate type is the one
// asked: a changed byte anywhere that matters is refused.
func FuzzVerifyBundle(f *testing.F) {
	seed, err := os.ReadFile("testdata/bundle.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{}}`))
	key, err := cosign.ParsePublicKey(mustRead(f, "testdata/vendor.pub"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := cosign.VerifyBundle(context.Background(), b, key, cosign.PredicateTypeSign, bundled)
		if err != nil {
			return
		}
		var s cosign.Statement
		if json.Unmarshal(st, &s) != nil || s.PredicateType != cosign.PredicateTypeSign || !bytes.Contains(st, []byte(bundled.Encoded())) {
			t.Fatalf("accepted %s", st)
		}
	})
}

// FuzzVerifySimpleSigning: whatever payload and signature a .sig tag
// holds, VerifySimpleSigning never panics, and what it accepts is a
// cosign payload naming the digest asked.
func FuzzVerifySimpleSigning(f *testing.F) {
	f.Add(mustRead(f, "testdata/simplesigning.json"), string(mustRead(f, "testdata/simplesigning.sig")))
	key, err := cosign.ParsePublicKey(mustRead(f, "testdata/vendor.pub"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p []byte, sig string) {
		if cosign.VerifySimpleSigning(p, sig, key, classic) != nil {
			return
		}
		var s payload.SimpleContainerImage
		if json.Unmarshal(p, &s) != nil || s.Critical.Image.DockerManifestDigest != classic.String() || s.Critical.Type != payload.CosignSignatureType {
			t.Fatalf("accepted %s", p)
		}
	})
}

func mustRead(f *testing.F, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
