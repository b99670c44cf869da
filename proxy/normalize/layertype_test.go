package normalize

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/rewrite"
)

// typedAsTar is an OCI image whose layers are compressed as comp's OCI
// type says, and whose manifest declares them all as plain tar (as buildah
// 1.8 - 1.9 did).
func typedAsTar(t *testing.T, layerType string) (regtest.Image, cache.Manifest) {
	t.Helper()
	img := build(t, regtest.ImageOptions{LayerMediaType: layerType}, baseLayer, xattrLayer)
	img.Manifest = bytes.ReplaceAll(img.Manifest, []byte(`"`+layerType+`"`), []byte(`"`+ocispec.MediaTypeImageLayer+`"`))
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	return img, cache.Manifest{MediaType: ocispec.MediaTypeImageManifest, Digest: img.ManifestDigest, Content: img.Manifest}
}

// TestLayerMediaType: layers typed as OCI's plain tar get the type of their
// compression, read from verified blobs only (the config is not read), the
// same digest on a fresh cache; a layer that really is plain tar stays; a
// blob that fails its digest gives no answer and no verdict.
func TestLayerMediaType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rules := ruleset.Set{LayerMediaType: true}
	for _, tc := range []struct {
		name, layerType string
		want            string
	}{
		{"gzip", ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerGzip},
		{"zstd", ocispec.MediaTypeImageLayerZstd, ocispec.MediaTypeImageLayerZstd},
		{"plain tar", ocispec.MediaTypeImageLayer, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, m := typedAsTar(t, tc.layerType)
			normalized := func() (Result, *memSource) {
				store := cache.New(inmemory.New())
				src := newSource(store, img)
				res, err := newEngine(store).Normalize(ctx, src, m, rules)
				if err != nil {
					t.Fatal(err)
				}
				return res, src
			}
			res, src := normalized()
			if slices.Contains(src.blobReads(), digest.FromBytes(img.Config)) {
				t.Error("the config was read")
			}
			if tc.want == "" {
				if res.Changed() {
					t.Fatalf("a plain tar layer was retyped: %s", res.Manifest.Content)
				}
				return
			}
			var got ocispec.Manifest
			json.Unmarshal(res.Manifest.Content, &got)
			for i, l := range got.Layers {
				if l.MediaType != tc.want || l.Digest != digest.FromBytes(img.Layers[i]) {
					t.Errorf("layer %d: %+v, want type %s and the same blob", i, l, tc.want)
				}
			}
			if c := res.Verdict.Changes; len(c) != 2 || c[0].Kind != rewrite.KindLayerMediaType {
				t.Errorf("changes %+v", c)
			}
			if again, _ := normalized(); again.Manifest.Digest != res.Manifest.Digest {
				t.Errorf("a fresh cache made %s, the first %s", again.Manifest.Digest, res.Manifest.Digest)
			}
		})
	}

	t.Run("unverified", func(t *testing.T) {
		t.Parallel()
		img, m := typedAsTar(t, ocispec.MediaTypeImageLayerGzip)
		store := cache.New(inmemory.New())
		src := newSource(store, img)
		// gzip's first bytes, but not the blob the digest names.
		l := digest.FromBytes(img.Layers[0])
		src.blobs[l] = append(slices.Clone(img.Layers[0][:10]), 0)
		if res, err := newEngine(store).Normalize(ctx, src, m, rules); err == nil {
			t.Fatalf("typed from a blob that failed its digest: %s", res.Manifest.Content)
		}
		if _, err := store.GetNormalization(ctx, m.Digest, rules.Key()); err == nil {
			t.Error("a verdict was recorded")
		}
	})
}
