package attest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/regnorm/regnorm/internal/cosign"
	"github.com/regnorm/regnorm/proxy/attest"
)

// TestMakeBundle: a signed attestation's bundle artifact (ECDSA P-256,
// ed25519) is cosign v3's layout: an image manifest of artifact type
// bundle whose subject is the variant, the classic artifact's config, one
// bundle layer, cosign's annotations and no time. Its bundle parses as
// sigstore's protobuf-specs type with no unknown field (cosign reads it
// strictly), carries the key's hint, and verifies with the key as the same
// statement the envelope holds, for regnorm's predicate type and the
// variant; another key fails. Made again, by another Maker with the same
// key, it is the same bytes. Without a key no bundle is made.
func TestMakeBundle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := derivation()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d.Variant.Digest, Size: 1234}
	ks := keys(t)
	for name, key := range ks {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := &attest.Maker{Signer: signer(t, key), Version: "v1.0.0"}
			a, err := m.Make(ctx, d, subject)
			if err != nil {
				t.Fatal(err)
			}
			b, err := m.MakeBundle(a, subject)
			if err != nil {
				t.Fatal(err)
			}
			var man ocispec.Manifest
			if err := json.Unmarshal(b.Manifest, &man); err != nil {
				t.Fatal(err)
			}
			switch {
			case b.Type != cosign.MediaTypeBundle || man.ArtifactType != cosign.MediaTypeBundle || b.Descriptor().ArtifactType != cosign.MediaTypeBundle:
				t.Fatalf("types %q %q", b.Type, man.ArtifactType)
			case man.Subject == nil || man.Subject.Digest != subject.Digest || man.Subject.Size != subject.Size:
				t.Fatalf("subject %+v", man.Subject)
			case man.Config.Digest != a.ConfigDigest || b.ConfigDigest != a.ConfigDigest || !bytes.Equal(b.Config, a.Config):
				t.Fatalf("config %+v, want the classic artifact's %s", man.Config, a.ConfigDigest)
			case len(man.Layers) != 1 || man.Layers[0].MediaType != cosign.MediaTypeBundle || man.Layers[0].Digest != digest.FromBytes(b.Envelope) || man.Layers[0].Size != int64(len(b.Envelope)):
				t.Fatalf("layers %+v", man.Layers)
			case man.Annotations[cosign.AnnotationBundleContent] != "dsse-envelope" || man.Annotations[cosign.AnnotationBundlePredicateType] != attest.PredicateType || len(man.Annotations) != 2:
				t.Fatalf("annotations %v", man.Annotations)
			case b.Digest != digest.FromBytes(b.Manifest):
				t.Fatal("digest does not verify")
			}
			var pb protobundle.Bundle
			if err := protojson.Unmarshal(b.Envelope, &pb); err != nil {
				t.Fatalf("cosign's strict reading: %v\n%s", err, b.Envelope)
			}
			hint, _ := cosign.KeyHint(m.Signer.Public())
			if pb.GetVerificationMaterial().GetPublicKey().GetHint() != hint || len(pb.GetVerificationMaterial().GetTlogEntries()) != 0 {
				t.Fatalf("verification material %v", pb.GetVerificationMaterial())
			}
			st, err := cosign.VerifyBundle(ctx, b.Envelope, m.Signer.Public(), attest.PredicateType, d.Variant.Digest)
			want, _ := attest.Payload(a.Envelope)
			if err != nil || !bytes.Equal(st, want) {
				t.Fatalf("the bundle: %v\n%s", err, st)
			}
			other := keys(t)[name]
			if _, err := cosign.VerifyBundle(ctx, b.Envelope, signer(t, other).Public(), attest.PredicateType, d.Variant.Digest); err == nil {
				t.Fatal("verified with another key")
			}
			again, err := (&attest.Maker{Signer: signer(t, key), Version: "v1.0.0"}).Make(ctx, d, subject)
			if err != nil {
				t.Fatal(err)
			}
			b2, err := m.MakeBundle(again, subject)
			if err != nil || !bytes.Equal(b2.Manifest, b.Manifest) || !bytes.Equal(b2.Envelope, b.Envelope) {
				t.Fatalf("made again: %v\n%s\n%s", err, b2.Envelope, b.Envelope)
			}
		})
	}
	unsigned := &attest.Maker{Version: "v1.0.0"}
	a, err := unsigned.Make(ctx, d, subject)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unsigned.MakeBundle(a, subject); err == nil {
		t.Fatal("a bundle of an unsigned attestation")
	}
}
