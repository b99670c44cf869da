package cosign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigdsse "github.com/sigstore/sigstore/pkg/signature/dsse"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// Media types and annotations of cosign's layouts.
const (
	// MediaTypeBundle is sigstore's bundle v0.3: the artifact type of
	// cosign v3's signatures and attestations, and their one layer's.
	MediaTypeBundle = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// MediaTypeSimpleSigning is a classic signature's layer: the payload
	// signed.
	MediaTypeSimpleSigning = "application/vnd.dev.cosign.simplesigning.v1+json"
	// AnnotationSignature holds a classic layer's signature, base64.
	AnnotationSignature = "dev.cosignproject.cosign/signature"
	// AnnotationBundleContent and AnnotationBundlePredicateType are what
	// cosign v3 says of a bundle on its artifact manifest: "dsse-envelope",
	// and its statement's predicate type.
	AnnotationBundleContent       = "dev.sigstore.bundle.content"
	AnnotationBundlePredicateType = "dev.sigstore.bundle.predicateType"
	// PredicateTypeSign is the predicate type of cosign v3's signature of
	// an image: a statement about the digest, with an empty predicate.
	PredicateTypeSign = "https://sigstore.dev/cosign/sign/v1"
	// PayloadTypeInToto is the DSSE payload type of an in-toto statement.
	PayloadTypeInToto = "application/vnd.in-toto+json"
)

// bundleMediaTypes are the bundle versions read: a key-only DSSE bundle
// means the same in each.
var bundleMediaTypes = []string{
	MediaTypeBundle,
	"application/vnd.dev.sigstore.bundle+json;version=0.3",
	"application/vnd.dev.sigstore.bundle+json;version=0.2",
	"application/vnd.dev.sigstore.bundle+json;version=0.1",
}

// SignatureTag is the tag cosign's classic signatures of dgst are pushed
// under: sha256-<hex>.sig.
func SignatureTag(dgst digest.Digest) string {
	return dgst.Algorithm().String() + "-" + dgst.Encoded() + ".sig"
}

// ErrBadSignature is a signature that does not verify with the key given.
var ErrBadSignature = errors.New("the signature does not verify with the key")

// ErrOtherDigest is a signature, valid, of another digest than the one
// asked.
var ErrOtherDigest = errors.New("signed, but of another digest")

// ParsePublicKey is the public key in a PEM file, as cosign
// generate-key-pair (and openssl pkey -pubout) write it: ECDSA, RSA or
// ed25519.
func ParsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	key, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("parse the public key: %w", err)
	}
	if _, err := signature.LoadDefaultVerifier(key); err != nil {
		return nil, fmt.Errorf("parse the public key: %w", err)
	}
	return key, nil
}

// verifier is the verifier of key as cosign has it: the hash its type
// and size call for (SHA-256 for P-256 and RSA, SHA-384 for P-384).
func verifier(key crypto.PublicKey) (signature.Verifier, error) {
	v, err := signature.LoadDefaultVerifier(key)
	if err != nil {
		return nil, fmt.Errorf("load the key: %w", err)
	}
	return v, nil
}

// VerifySimpleSigning checks a classic cosign signature: sig (the layer's
// AnnotationSignature, base64) is key's signature of payload (the layer's
// bytes), and payload is a cosign container image signature of dgst
// (critical.image.docker-manifest-digest). The claimed identity
// (critical.identity.docker-reference) is not checked: cosign does not by
// default either, and a copied image keeps its signature.
func VerifySimpleSigning(payloadBytes []byte, sig string, key crypto.PublicKey, dgst digest.Digest) error {
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: the signature annotation is not base64: %v", ErrBadSignature, err)
	}
	v, err := verifier(key)
	if err != nil {
		return err
	}
	if err := v.VerifySignature(bytes.NewReader(raw), bytes.NewReader(payloadBytes)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	// Only what is signed is read.
	var p payload.SimpleContainerImage
	if err := json.Unmarshal(payloadBytes, &p); err != nil {
		return fmt.Errorf("the signed payload is not a simple-signing payload: %w", err)
	}
	if p.Critical.Type != payload.CosignSignatureType {
		return fmt.Errorf("the signed payload is of type %q, not %q", p.Critical.Type, payload.CosignSignatureType)
	}
	if p.Critical.Image.DockerManifestDigest != dgst.String() {
		return fmt.Errorf("%w: the payload names %q, not %s", ErrOtherDigest, p.Critical.Image.DockerManifestDigest, dgst)
	}
	return nil
}

// Statement is the part of an in-toto statement a signature check reads.
type Statement struct {
	Type          string    `json:"_type"`
	PredicateType string    `json:"predicateType"`
	Subject       []Subject `json:"subject"`
}

// Subject is an in-toto resource descriptor: a name and its digests.
type Subject struct {
	Name   string            `json:"name,omitempty"`
	Digest map[string]string `json:"digest"`
}

// subjects are the statement's subjects' digests, as algorithm:hex.
func (s Statement) subjects() string {
	var out []string
	for _, sub := range s.Subject {
		for alg, hex := range sub.Digest {
			out = append(out, alg+":"+hex)
		}
	}
	slices.Sort(out)
	return "[" + strings.Join(out, " ") + "]"
}

// names reports whether one of the statement's subjects is dgst.
func (s Statement) names(dgst digest.Digest) bool {
	return slices.ContainsFunc(s.Subject, func(sub Subject) bool { return sub.Digest[dgst.Algorithm().String()] == dgst.Encoded() })
}

// VerifyBundle checks a sigstore bundle (cosign v3's format) of a DSSE
// envelope, with a key and nothing else: the envelope is an in-toto
// statement signed by key, of predicate type predicateType, and one of
// its subjects is dgst. It returns the statement's bytes. Transparency log
// entries and timestamps the bundle may hold are not read (key-only, as
// cosign --insecure-ignore-tlog), nor is the public key hint trusted: the
// key is the caller's.
func VerifyBundle(ctx context.Context, bundleJSON []byte, key crypto.PublicKey, predicateType string, dgst digest.Digest) ([]byte, error) {
	var b protobundle.Bundle
	// Fields of later versions are skipped, as sigstore-go does.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(bundleJSON, &b); err != nil {
		return nil, fmt.Errorf("not a sigstore bundle: %w", err)
	}
	if !slices.Contains(bundleMediaTypes, b.GetMediaType()) {
		return nil, fmt.Errorf("a bundle of media type %q, not %s", b.GetMediaType(), MediaTypeBundle)
	}
	env := b.GetDsseEnvelope()
	if env == nil {
		return nil, errors.New("a bundle without a DSSE envelope (a message signature is not what cosign writes for an image)")
	}
	if env.GetPayloadType() != PayloadTypeInToto {
		return nil, fmt.Errorf("payload type %q, want %q", env.GetPayloadType(), PayloadTypeInToto)
	}
	if len(env.GetSignatures()) == 0 {
		return nil, fmt.Errorf("%w: the envelope has no signature", ErrBadSignature)
	}
	e := ssldsse.Envelope{PayloadType: env.GetPayloadType(), Payload: base64.StdEncoding.EncodeToString(env.GetPayload())}
	for _, s := range env.GetSignatures() {
		e.Signatures = append(e.Signatures, ssldsse.Signature{KeyID: s.GetKeyid(), Sig: base64.StdEncoding.EncodeToString(s.GetSig())})
	}
	statement, err := verifyEnvelope(ctx, &e, key)
	if err != nil {
		return nil, err
	}
	var st Statement
	if err := json.Unmarshal(statement, &st); err != nil {
		return nil, fmt.Errorf("the signed payload is not an in-toto statement: %w", err)
	}
	switch {
	case st.Type != "https://in-toto.io/Statement/v1" && st.Type != "https://in-toto.io/Statement/v0.1":
		return nil, fmt.Errorf("the signed payload is of _type %q, not an in-toto statement", st.Type)
	case st.PredicateType != predicateType:
		return nil, fmt.Errorf("a statement of predicate type %q, not %q", st.PredicateType, predicateType)
	case !st.names(dgst):
		return nil, fmt.Errorf("%w: the statement's subjects are %s, not %s", ErrOtherDigest, st.subjects(), dgst)
	}
	return statement, nil
}

// verifyEnvelope checks that env is signed by key (secure-systems-lab's
// DSSE over sigstore's verifier: the signature is over the envelope's
// pre-authentication encoding) and returns its payload.
func verifyEnvelope(ctx context.Context, env *ssldsse.Envelope, key crypto.PublicKey) ([]byte, error) {
	v, err := verifier(key)
	if err != nil {
		return nil, err
	}
	ev, err := ssldsse.NewEnvelopeVerifier(&sigdsse.VerifierAdapter{SignatureVerifier: v, Pub: key})
	if err != nil {
		return nil, err
	}
	if _, err := ev.Verify(ctx, env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return env.DecodeB64Payload()
}

// KeyHint is the hint cosign v3 writes in a key-signed bundle's
// verification material: the base64 of the SHA-256 of the key's PKIX DER.
// It names the key; it proves nothing.
func KeyHint(key crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}

// bundleJSON is a key-signed DSSE bundle as cosign v3 writes it, in
// protobuf's JSON names and in this field order (encoding/json: protojson
// varies its whitespace on purpose, and what is written must be the same
// bytes every time).
type bundleJSON struct {
	MediaType            string `json:"mediaType"`
	VerificationMaterial struct {
		PublicKey struct {
			Hint string `json:"hint"`
		} `json:"publicKey"`
	} `json:"verificationMaterial"`
	DsseEnvelope struct {
		Payload     string            `json:"payload"`
		PayloadType string            `json:"payloadType"`
		Signatures  []bundleSignature `json:"signatures"`
	} `json:"dsseEnvelope"`
}

type bundleSignature struct {
	Sig   string `json:"sig"`
	KeyID string `json:"keyid,omitempty"`
}

// NewBundle is the sigstore bundle (MediaTypeBundle) of envelope, a DSSE
// envelope signed by the private half of key: the same envelope, its
// payload and signatures unchanged (so no new signature is made), with
// key's hint (KeyHint) as its verification material and no transparency
// log entry, as cosign v3 writes a bundle signed with a key offline. The
// same envelope and key always make the same bytes.
func NewBundle(envelope []byte, key crypto.PublicKey) ([]byte, error) {
	var env ssldsse.Envelope
	if err := json.Unmarshal(envelope, &env); err != nil {
		return nil, fmt.Errorf("decode the envelope: %w", err)
	}
	if len(env.Signatures) == 0 {
		return nil, errors.New("a bundle of an unsigned envelope: nothing to verify")
	}
	// Normalized to standard base64, as protobuf's JSON writes bytes.
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil, err
	}
	hint, err := KeyHint(key)
	if err != nil {
		return nil, err
	}
	var b bundleJSON
	b.MediaType = MediaTypeBundle
	b.VerificationMaterial.PublicKey.Hint = hint
	b.DsseEnvelope.Payload = base64.StdEncoding.EncodeToString(payload)
	b.DsseEnvelope.PayloadType = env.PayloadType
	for _, s := range env.Signatures {
		raw, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			return nil, fmt.Errorf("a signature that is not base64: %w", err)
		}
		b.DsseEnvelope.Signatures = append(b.DsseEnvelope.Signatures, bundleSignature{Sig: base64.StdEncoding.EncodeToString(raw), KeyID: s.KeyID})
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(b); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}
