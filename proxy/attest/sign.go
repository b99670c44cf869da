package attest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigdsse "github.com/sigstore/sigstore/pkg/signature/dsse"
)

// PayloadType is the DSSE payload type of an in-toto statement.
const PayloadType = "application/vnd.in-toto+json"

// Signer signs statements into DSSE envelopes; a nil *Signer makes them
// unsigned (an envelope with no signatures).
type Signer struct {
	envelope *ssldsse.EnvelopeSigner
	public   crypto.PublicKey
}

// ParsePrivateKey is the key in a PEM file (PKCS #8, or SEC 1 for ECDSA,
// unencrypted), read as sigstore's cryptoutils reads it. Only ECDSA P-256
// and ed25519 keys sign: both make the same signature of the same bytes
// every time (NewSigner).
func ParsePrivateKey(pemBytes []byte) (crypto.PrivateKey, error) {
	// What openssl writes around a key: an EC PARAMETERS block before it
	// (ecparam -genkey) is skipped; an encrypted key is named as such.
	rest := pemBytes
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "EC PARAMETERS":
			rest = next
			continue
		case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] == "4,ENCRYPTED":
			return nil, errors.New("parse the attestation key: it is encrypted, and regnorm reads no password: decrypt it (openssl pkey -in key.pem -out plain.pem)")
		}
		break
	}
	key, err := cryptoutils.UnmarshalPEMToPrivateKey(rest, cryptoutils.SkipPassword)
	if err != nil {
		return nil, fmt.Errorf("parse the attestation key: %w", err)
	}
	return key, nil
}

// NewSigner signs with key: an ed25519 key through sigstore's signer
// (ed25519 is deterministic), an ECDSA P-256 key over SHA-256 with the
// standard library's deterministic ECDSA (RFC 6979: crypto/ecdsa's Sign
// with no random source), since sigstore's ECDSA signer draws a random
// nonce, and replicas must make the same envelope.
func NewSigner(key crypto.PrivateKey) (*Signer, error) {
	var s ssldsse.Signer
	var public crypto.PublicKey
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sv, err := signature.LoadSigner(k, crypto.Hash(0))
		if err != nil {
			return nil, err
		}
		public = k.Public()
		s = &sigdsse.SignerAdapter{SignatureSigner: sv, Pub: public}
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("an ECDSA key on %s: only P-256 signs attestations", k.Curve.Params().Name)
		}
		public = k.Public()
		s = rfc6979Signer{key: k}
	default:
		return nil, fmt.Errorf("a %T key: attestations are signed with ECDSA P-256 or ed25519 keys", key)
	}
	es, err := ssldsse.NewEnvelopeSigner(s)
	if err != nil {
		return nil, err
	}
	return &Signer{envelope: es, public: public}, nil
}

// Public is the key that verifies the signer's envelopes; nil for a nil
// Signer.
func (s *Signer) Public() crypto.PublicKey {
	if s == nil {
		return nil
	}
	return s.public
}

// Envelope is statement in a DSSE envelope, signed unless s is nil,
// encoded: the same statement and key always make the same bytes.
func (s *Signer) Envelope(ctx context.Context, statement []byte) ([]byte, error) {
	env := &ssldsse.Envelope{PayloadType: PayloadType, Payload: base64.StdEncoding.EncodeToString(statement), Signatures: []ssldsse.Signature{}}
	if s != nil {
		var err error
		if env, err = s.envelope.SignPayload(ctx, PayloadType, statement); err != nil {
			return nil, fmt.Errorf("sign the attestation: %w", err)
		}
	}
	return json.Marshal(env)
}

// rfc6979Signer is a DSSE signer of ECDSA P-256 signatures over SHA-256
// with deterministic nonces (crypto/ecdsa, RFC 6979).
type rfc6979Signer struct{ key *ecdsa.PrivateKey }

func (r rfc6979Signer) Sign(_ context.Context, data []byte) ([]byte, error) {
	h := sha256.Sum256(data)
	// A nil source of randomness: RFC 6979's nonce (crypto/ecdsa).
	return r.key.Sign(nil, h[:], crypto.SHA256)
}

func (r rfc6979Signer) KeyID() (string, error) { return "", nil }

// ErrUnsigned is Verify's error for an envelope without signatures.
var ErrUnsigned = errors.New("the attestation is not signed")

// Verify checks that envelope is a DSSE envelope of an in-toto statement
// signed by public (through sigstore's verifier and secure-systems-lab's
// DSSE), and returns the statement.
func Verify(ctx context.Context, envelope []byte, public crypto.PublicKey) ([]byte, error) {
	var env ssldsse.Envelope
	if err := json.Unmarshal(envelope, &env); err != nil {
		return nil, fmt.Errorf("decode the envelope: %w", err)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("payload type %q, want %q", env.PayloadType, PayloadType)
	}
	if len(env.Signatures) == 0 {
		return nil, ErrUnsigned
	}
	v, err := signature.LoadVerifier(public, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	ev, err := ssldsse.NewEnvelopeVerifier(&sigdsse.VerifierAdapter{SignatureVerifier: v, Pub: public})
	if err != nil {
		return nil, err
	}
	if _, err := ev.Verify(ctx, &env); err != nil {
		return nil, fmt.Errorf("verify the attestation: %w", err)
	}
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil, err
	}
	return bytes.Clone(payload), nil
}

// Payload is the statement in envelope, a DSSE envelope of an in-toto
// statement, its signatures not checked: what an attestation says, not
// who said it (Verify checks that).
func Payload(envelope []byte) ([]byte, error) {
	var env ssldsse.Envelope
	if err := json.Unmarshal(envelope, &env); err != nil {
		return nil, fmt.Errorf("decode the envelope: %w", err)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("payload type %q, want %q", env.PayloadType, PayloadType)
	}
	return env.DecodeB64Payload()
}

// ParsePublicKey is the public key in a PEM file (PKIX, as openssl pkey
// -pubout and cosign write it) that verifies attestations: ECDSA P-256 or
// ed25519.
func ParsePublicKey(pemBytes []byte) (crypto.PublicKey, error) {
	key, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("parse the public key: %w", err)
	}
	switch k := key.(type) {
	case ed25519.PublicKey:
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("an ECDSA key on %s: attestations are signed with P-256", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("a %T key: attestations are signed with ECDSA P-256 or ed25519 keys", key)
	}
	return key, nil
}
