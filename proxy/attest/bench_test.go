package attest_test

import (
	"context"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/proxy/attest"
)

// BenchmarkMake is the CPU cost of one variant's attestation (statement,
// envelope, artifact), by key, and the bytes it stores; /bundle, of the
// bundle artifact made from it (its config is the other's).
func BenchmarkMake(b *testing.B) {
	ctx := context.Background()
	d := derivation()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d.Variant.Digest, Size: 1234}
	ks := keys(b)
	for _, tt := range []struct {
		name   string
		signer *attest.Signer
	}{{"unsigned", nil}, {"ecdsa-p256", signer(b, ks["ecdsa-p256"])}, {"ed25519", signer(b, ks["ed25519"])}} {
		b.Run(tt.name, func(b *testing.B) {
			m := &attest.Maker{Signer: tt.signer, Version: "v1.0.0"}
			var a attest.Artifact
			for b.Loop() {
				var err error
				if a, err = m.Make(ctx, d, subject); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(a.Manifest)+len(a.Config)+len(a.Envelope)), "stored-bytes")
		})
		if tt.signer == nil {
			continue
		}
		// The bundle artifact beside it, from the same envelope: what
		// writing cosign v3's format adds.
		b.Run(tt.name+"/bundle", func(b *testing.B) {
			m := &attest.Maker{Signer: tt.signer, Version: "v1.0.0"}
			a, err := m.Make(ctx, d, subject)
			if err != nil {
				b.Fatal(err)
			}
			var bundle attest.Artifact
			for b.Loop() {
				if bundle, err = m.MakeBundle(a, subject); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(bundle.Manifest)+len(bundle.Envelope)), "stored-bytes")
		})
	}
}
