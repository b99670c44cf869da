package attest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/cosign"
)

// MediaTypeEnvelope is the media type of a DSSE envelope: the artifact's
// type and its one layer's.
const MediaTypeEnvelope = "application/vnd.dsse.envelope.v1+json"

// The layer annotations cosign's classic attestations carry: cosign
// verify-attestation reads the envelope from the layer, and its --type
// from the statement; the annotation names the type for tools that list.
const (
	// AnnotationPredicateType names the predicate type on the envelope
	// layer.
	AnnotationPredicateType = "predicateType"
	annotationSignature     = "dev.cosignproject.cosign/signature"
)

// MediaTypeConfig is the type of the artifact's config: a small JSON
// object naming the predicate type and the subject. Not the OCI empty
// config ({}): every artifact shares that blob, and regnorm admits a
// client to what it made where the source is held (proxy/mirror), which
// must not decide who reads another artifact's {} in another repository.
const MediaTypeConfig = "application/vnd.regnorm.attestation.config.v1+json"

// Artifact is an attestation as an OCI artifact: an image manifest whose
// subject is the variant, with a config of its own (MediaTypeConfig) and
// one layer: the DSSE envelope (Make), or the sigstore bundle that holds
// it (MakeBundle).
type Artifact struct {
	// Type is the artifact's type: MediaTypeEnvelope, or
	// cosign.MediaTypeBundle.
	Type string
	// Manifest is the manifest's bytes, of type ocispec.MediaTypeImageManifest.
	Manifest []byte
	Digest   digest.Digest
	// Envelope is the layer's bytes, of EnvelopeDigest: the envelope, or
	// the bundle.
	Envelope       []byte
	EnvelopeDigest digest.Digest
	// Config is the config's bytes, of ConfigDigest.
	Config       []byte
	ConfigDigest digest.Digest
}

// Maker makes attestations: with a Signer's key (signed) or none
// (unsigned), naming Version as regnorm's.
type Maker struct {
	Signer  *Signer
	Version string
}

// Make is the attestation of d for the variant described by subject (its
// media type, digest and size): the statement, its envelope, and the
// artifact that carries it. The same d, subject and key always make the
// same bytes.
func (m *Maker) Make(ctx context.Context, d Derivation, subject ocispec.Descriptor) (Artifact, error) {
	if subject.Digest != d.Variant.Digest {
		return Artifact{}, fmt.Errorf("attest %s: the subject is %s", d.Variant.Digest, subject.Digest)
	}
	d.Version = m.Version
	st, err := NewStatement(d)
	if err != nil {
		return Artifact{}, fmt.Errorf("attest %s: %w", d.Variant.Digest, err)
	}
	env, err := m.Signer.Envelope(ctx, st)
	if err != nil {
		return Artifact{}, fmt.Errorf("attest %s: %w", d.Variant.Digest, err)
	}
	a := Artifact{Type: MediaTypeEnvelope, Envelope: env, EnvelopeDigest: digest.FromBytes(env)}
	// Fields in sorted order, as the statement's.
	if a.Config, err = json.Marshal(struct {
		PredicateType string        `json:"predicateType"`
		Subject       digest.Digest `json:"subject"`
	}{PredicateType, subject.Digest}); err != nil {
		return Artifact{}, err
	}
	a.ConfigDigest = digest.FromBytes(a.Config)
	subj := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	manifest := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: MediaTypeEnvelope,
		Config:       ocispec.Descriptor{MediaType: MediaTypeConfig, Digest: a.ConfigDigest, Size: int64(len(a.Config))},
		Layers: []ocispec.Descriptor{{MediaType: MediaTypeEnvelope, Digest: a.EnvelopeDigest, Size: int64(len(env)),
			Annotations: map[string]string{AnnotationPredicateType: PredicateType, annotationSignature: ""}}},
		Subject: &subj,
	}
	if a.Manifest, err = json.Marshal(manifest); err != nil {
		return Artifact{}, fmt.Errorf("attest %s: %w", d.Variant.Digest, err)
	}
	a.Digest = digest.FromBytes(a.Manifest)
	return a, nil
}

// MakeBundle is the attestation a (Make's, signed) as cosign v3 writes
// one: an artifact of type cosign.MediaTypeBundle whose subject is the
// variant, with a's config and one layer, the sigstore bundle of a's
// envelope (the same statement and signature: nothing is signed again)
// with the key's hint, annotated as cosign annotates it (its content, the
// predicate type; no time). cosign v3's verify-attestation and policy
// engines that read sigstore bundles find it through the referrers API.
// The same a and key always make the same bytes.
func (m *Maker) MakeBundle(a Artifact, subject ocispec.Descriptor) (Artifact, error) {
	if m.Signer == nil {
		return Artifact{}, errors.New("a bundle of an unsigned attestation: nothing to verify")
	}
	b, err := cosign.NewBundle(a.Envelope, m.Signer.Public())
	if err != nil {
		return Artifact{}, fmt.Errorf("attest %s: %w", subject.Digest, err)
	}
	out := Artifact{Type: cosign.MediaTypeBundle, Envelope: b, EnvelopeDigest: digest.FromBytes(b), Config: a.Config, ConfigDigest: a.ConfigDigest}
	subj := ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	manifest := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: cosign.MediaTypeBundle,
		Config:       ocispec.Descriptor{MediaType: MediaTypeConfig, Digest: a.ConfigDigest, Size: int64(len(a.Config))},
		Layers:       []ocispec.Descriptor{{MediaType: cosign.MediaTypeBundle, Digest: out.EnvelopeDigest, Size: int64(len(b))}},
		Subject:      &subj,
		Annotations: map[string]string{cosign.AnnotationBundleContent: "dsse-envelope",
			cosign.AnnotationBundlePredicateType: PredicateType},
	}
	if out.Manifest, err = json.Marshal(manifest); err != nil {
		return Artifact{}, fmt.Errorf("attest %s: %w", subject.Digest, err)
	}
	out.Digest = digest.FromBytes(out.Manifest)
	return out, nil
}

// Descriptor is the artifact's descriptor as a referrers list names it.
func (a Artifact) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: a.Digest, Size: int64(len(a.Manifest)), ArtifactType: a.Type}
}

// TagOf is the tag cosign looks for a digest's classic attestations
// under: sha256-<hex>.att.
func TagOf(dgst digest.Digest) string {
	return dgst.Algorithm().String() + "-" + dgst.Encoded() + ".att"
}
