package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// verifyFixture is a real registry upstream holding library/app:v1 and :v2
// (two originals whose configs are declared application/octet-stream, so
// both have variants), regnorm in-process in front of it, attesting with
// a key, and v1's variant, pulled by tag through it.
type verifyFixture struct {
	upstream  *regtest.Registry
	mirror    string // host:port
	signer    *attest.Signer
	key       string // the public key's PEM file
	otherKey  string // another public key's
	v1, v2    digest.Digest
	variant   digest.Digest // v1's variant
	variantMT string
	variantSz int64
}

func writePublic(t *testing.T, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "regnorm.pub")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	ctx := context.Background()
	f := &verifyFixture{upstream: regtest.Start(t, regtest.Options{})}
	for i, tag := range []string{"v1", "v2"} {
		img, err := regtest.BuildImage(regtest.ImageOptions{ConfigMediaType: "application/octet-stream"},
			[]regtest.File{{Name: "hello.txt", Content: []byte("hello " + tag + "\n")}})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.upstream.Client().PushImage(ctx, "library/app", tag, img); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			f.v1 = img.ManifestDigest
		} else {
			f.v2 = img.ManifestDigest
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if f.signer, err = attest.NewSigner(key); err != nil {
		t.Fatal(err)
	}
	f.key, f.otherKey = writePublic(t, key), writePublic(t, other)

	u, _ := url.Parse(f.upstream.URL)
	cfg := defaultConfig()
	w, err := wire(cfg, cache.New(inmemory.New()), []upstream.Config{{Name: "docker.io", URL: u}}, nil, nil, nil,
		&attest.Maker{Signer: f.signer, Version: "test"}, proxy.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.server.Handler(nil))
	t.Cleanup(srv.Close)
	f.mirror = strings.TrimPrefix(srv.URL, "http://")

	resp, err := http.Get(srv.URL + "/v2/library/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	f.variant = digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	f.variantMT, f.variantSz = resp.Header.Get("Content-Type"), resp.ContentLength
	if resp.StatusCode != http.StatusOK || f.variant == f.v1 || f.variant == "" {
		t.Fatalf("pull of v1 through regnorm: %d, %s (the original is %s): want its variant", resp.StatusCode, f.variant, f.v1)
	}
	return f
}

// verify runs regnorm verify with args, and returns its stdout and exit
// status.
func (f *verifyFixture) verify(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"verify"}, args...), env(nil), &out, &errOut)
	code := 0
	var e *exitError
	switch {
	case errors.As(err, &e):
		code = e.code
	case err != nil:
		code = 1
	}
	t.Logf("regnorm verify %s: status %d, %v\n%s%s", strings.Join(args, " "), code, err, out.String(), errOut.String())
	return out.String(), code
}

// pushAttestation signs an attestation of the variant with d's claims and
// pushes it to a plain registry under cosign's .att tag of the variant (or
// of under):
// an attestation regnorm never made, as anyone holding the key could.
func (f *verifyFixture) pushAttestation(t *testing.T, d attest.Derivation, under ...digest.Digest) string {
	t.Helper()
	ctx := context.Background()
	holder := regtest.Start(t, regtest.Options{})
	d.Variant = attest.Object{Digest: f.variant, MediaType: f.variantMT}
	a, err := (&attest.Maker{Signer: f.signer, Version: "test"}).Make(ctx, d, ocispec.Descriptor{MediaType: f.variantMT, Digest: f.variant, Size: f.variantSz})
	if err != nil {
		t.Fatal(err)
	}
	c := holder.Client()
	for _, b := range [][]byte{a.Config, a.Envelope} {
		if err := c.PushBlob(ctx, "library/app", b); err != nil {
			t.Fatal(err)
		}
	}
	tag := attest.TagOf(f.variant)
	if len(under) > 0 {
		tag = attest.TagOf(under[0])
	}
	if err := c.PushManifest(ctx, "library/app", tag, ocispec.MediaTypeImageManifest, a.Manifest); err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(holder.URL, "http://")
}

// TestVerify: regnorm verify passes a variant regnorm made and attested,
// re-deriving it from the upstream in memory, read from regnorm or from a
// copy elsewhere; it refuses (2) a wrong key, a variant without an
// attestation, a predicate naming another original than --original, one
// listing other changes, one naming an original its upstream lacks, and an
// attestation of another digest under the asked digest's tag; it refuses
// to run without a key unless told (1); and it says the bytes differ (3)
// for a predicate whose original or rules do not make the variant.
func TestVerify(t *testing.T) {
	t.Parallel()
	f := newVerifyFixture(t)
	up := f.upstream.URL
	image := f.mirror + "/library/app@" + f.variant.String()
	claims := attest.Derivation{Repository: "library/app", Upstream: "docker.io",
		Original: attest.Object{Digest: f.v1, MediaType: regtest.MediaTypeDockerManifest}, Rules: "config-media-type,symlink-xattrs,diff-ids",
		Changes: []attest.Change{{Kind: "config-media-type", Path: "config.mediaType", Old: "application/octet-stream", New: regtest.MediaTypeDockerConfig}}}

	t.Run("verified", func(t *testing.T) {
		t.Parallel()
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, image)
		if code != 0 || !strings.Contains(out, "rederived    OK   "+f.variant.String()+", identical") || !strings.Contains(out, "signature    OK") {
			t.Fatalf("status %d, want 0 with the variant derived again, identical\n%s", code, out)
		}
	})
	t.Run("verified from a copy, json", func(t *testing.T) {
		t.Parallel()
		// The attestation as regnorm made it, pushed elsewhere: the same
		// claims, signed with the same key.
		holder := f.pushAttestation(t, claims)
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, "--json", holder+"/library/app@"+f.variant.String())
		if code != 0 || !strings.Contains(out, `"outcome": "identical"`) || !strings.Contains(out, `"rederived": "`+f.variant.String()) {
			t.Fatalf("status %d, want 0\n%s", code, out)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		t.Parallel()
		out, code := f.verify(t, "--key", f.otherKey, "--plain-http", "--upstream", up, image)
		if code != exitInvalid || !strings.Contains(out, "signature    FAIL") {
			t.Fatalf("status %d, want %d with the signature failed\n%s", code, exitInvalid, out)
		}
	})
	t.Run("no key", func(t *testing.T) {
		t.Parallel()
		if _, code := f.verify(t, "--plain-http", "--upstream", up, image); code != 1 {
			t.Fatalf("status %d, want 1: no key and no --insecure-skip-signature", code)
		}
		out, code := f.verify(t, "--insecure-skip-signature", "--plain-http", "--upstream", up, image)
		if code != 0 || !strings.Contains(out, "signature    SKIP") {
			t.Fatalf("status %d, want 0 with the signature skipped\n%s", code, out)
		}
	})
	t.Run("no attestation", func(t *testing.T) {
		t.Parallel()
		// The original itself: regnorm attests only what it made.
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, f.mirror+"/library/app@"+f.v1.String())
		if code != exitInvalid || !strings.Contains(out, "attestation  FAIL") {
			t.Fatalf("status %d, want %d\n%s", code, exitInvalid, out)
		}
	})
	t.Run("another original", func(t *testing.T) {
		t.Parallel()
		other := claims
		other.Original.Digest = f.v2
		holder := f.pushAttestation(t, other)
		img := holder + "/library/app@" + f.variant.String()
		// Signed with the right key, but v2 does not make this variant.
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, img)
		if code != exitDiffers || !strings.Contains(out, "rederived    FAIL") {
			t.Fatalf("status %d, want %d\n%s", code, exitDiffers, out)
		}
		// And refused before any work when the original trusted is v1.
		out, code = f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, "--original", f.v1.String(), img)
		if code != exitInvalid || !strings.Contains(out, "predicate    FAIL names original "+f.v2.String()) {
			t.Fatalf("status %d, want %d\n%s", code, exitInvalid, out)
		}
	})
	t.Run("other rules", func(t *testing.T) {
		t.Parallel()
		other := claims
		other.Rules = "symlink-xattrs,diff-ids" // without the config's fix, v1 is clean
		holder := f.pushAttestation(t, other)
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, holder+"/library/app@"+f.variant.String())
		if code != exitDiffers || !strings.Contains(out, "rederived    FAIL") {
			t.Fatalf("status %d, want %d\n%s", code, exitDiffers, out)
		}
	})
	t.Run("changes misstated", func(t *testing.T) {
		t.Parallel()
		other := claims
		other.Changes = nil
		holder := f.pushAttestation(t, other)
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, holder+"/library/app@"+f.variant.String())
		if code != exitInvalid || !strings.Contains(out, "changes      FAIL") {
			t.Fatalf("status %d, want %d\n%s", code, exitInvalid, out)
		}
	})
	t.Run("original gone", func(t *testing.T) {
		t.Parallel()
		// Signed, but naming an original its upstream does not have (never
		// had, or deleted since).
		other := claims
		other.Original.Digest = digest.FromString("gone")
		holder := f.pushAttestation(t, other)
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, holder+"/library/app@"+f.variant.String())
		if code != exitInvalid || !strings.Contains(out, "original     FAIL docker.io/library/app@"+other.Original.Digest.String()+": not in its upstream") {
			t.Fatalf("status %d, want %d\n%s", code, exitInvalid, out)
		}
	})
	t.Run("another subject listed first", func(t *testing.T) {
		t.Parallel()
		// One .att manifest with two envelopes, both signed with the key:
		// the first is another digest's (v2 named as its variant), the
		// second this variant's. The one about this digest is taken.
		ctx := context.Background()
		holder := regtest.Start(t, regtest.Options{})
		c := holder.Client()
		maker := &attest.Maker{Signer: f.signer, Version: "test"}
		var layers []ocispec.Descriptor
		var config []byte
		for _, subject := range []digest.Digest{f.v2, f.variant} {
			d := claims
			d.Variant = attest.Object{Digest: subject, MediaType: f.variantMT}
			a, err := maker.Make(ctx, d, ocispec.Descriptor{MediaType: f.variantMT, Digest: subject, Size: f.variantSz})
			if err != nil {
				t.Fatal(err)
			}
			var m ocispec.Manifest
			if err := json.Unmarshal(a.Manifest, &m); err != nil {
				t.Fatal(err)
			}
			for _, b := range [][]byte{a.Config, a.Envelope} {
				if err := c.PushBlob(ctx, "library/app", b); err != nil {
					t.Fatal(err)
				}
			}
			layers, config = append(layers, m.Layers...), a.Config
		}
		m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config: ocispec.Descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest.FromBytes(config), Size: int64(len(config))},
			Layers: layers}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.PushManifest(ctx, "library/app", attest.TagOf(f.variant), ocispec.MediaTypeImageManifest, b); err != nil {
			t.Fatal(err)
		}
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, strings.TrimPrefix(holder.URL, "http://")+"/library/app@"+f.variant.String())
		if code != 0 {
			t.Fatalf("status %d, want 0: the attestation of this digest is listed, second\n%s", code, out)
		}
	})
	t.Run("subject elsewhere", func(t *testing.T) {
		t.Parallel()
		// The variant's attestation put under v2's tag: its statement is
		// not about v2.
		holder := f.pushAttestation(t, claims, f.v2)
		out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up, holder+"/library/app@"+f.v2.String())
		if code != exitInvalid || !strings.Contains(out, "statement    FAIL its subject is not "+f.v2.String()) {
			t.Fatalf("status %d, want %d\n%s", code, exitInvalid, out)
		}
	})
}
