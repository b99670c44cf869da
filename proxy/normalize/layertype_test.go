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
		// A gzip layer whose cached copy went bad after it was stored:
		// zstd's first bytes, then junk. A type taken from those bytes
		// would be zstd's; the verified read finds the damage, the layer
		// is fetched again, and the type is gzip's.
		img, m := typedAsTar(t, ocispec.MediaTypeImageLayerGzip)
		driver := inmemory.New()
		store := cache.New(driver)
		src := newSource(store, img)
		l := digest.FromBytes(img.Layers[0])
		if err := src.ensure(ctx, l); err != nil {
			t.Fatal(err)
		}
		bad := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, make([]byte, len(img.Layers[0])-4)...)
		if err := driver.PutContent(ctx, "/blobs/sha256/"+l.Encoded()[:2]+"/"+l.Encoded()+"/data", bad); err != nil {
			t.Fatal(err)
		}
		res, err := newEngine(store).Normalize(ctx, src, m, rules)
		if err != nil {
			t.Fatal(err)
		}
		var got ocispec.Manifest
		json.Unmarshal(res.Manifest.Content, &got)
		if len(got.Layers) == 0 || got.Layers[0].MediaType != ocispec.MediaTypeImageLayerGzip {
			t.Fatalf("layers %+v: the type was taken from bytes that fail the layer's digest", got.Layers)
		}
	})
}
