package main

import (
	"archive/tar"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestVerifyUnderTheMirrorsLayerLimits: a mirror whose normalize.maxLayerSize
// is below a layer's size leaves that layer untouched (its variant only has
// its config fixed, and its attestation says "layer-untouched"), as its
// operator chose. regnorm verify derives the variant again with its own
// defaults (16 GiB), so it rewrites that layer and says the bytes differ
// (3) for a variant that is exactly what that regnorm's rules made of its
// original. The limits a derivation was made under are not in the predicate,
// nor can they be given to verify; the same holds for maxZstdWindow and
// maxBlobSize (the engine's MaxMadeSize: none in verify).
func TestVerifyUnderTheMirrorsLayerLimits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	up := regtest.Start(t, regtest.Options{})
	// A config fixed by config-media-type and a layer symlink-xattrs would
	// rewrite: a symlink with an xattr.
	img, err := regtest.BuildImage(regtest.ImageOptions{ConfigMediaType: "application/octet-stream"},
		[]regtest.File{{Name: "data", Content: regtest.RandomBytes(4 << 10), Mode: 0o644},
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "data", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Client().PushImage(ctx, "library/app", "v1", img); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := attest.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	cfg := defaultConfig()
	cfg.Normalize.MaxLayerSize = 1024 // the layer decompresses to more
	w, err := wire(cfg, cache.New(inmemory.New()), []upstream.Config{{Name: "docker.io", URL: u}}, nil, nil, nil,
		&attest.Maker{Signer: signer, Version: "test"}, proxy.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.server.Handler(nil))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/v2/library/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	variant := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if resp.StatusCode != http.StatusOK || variant == "" || variant == img.ManifestDigest {
		t.Fatalf("pull through regnorm: %d %s, want a variant of %s", resp.StatusCode, variant, img.ManifestDigest)
	}
	f := &verifyFixture{key: writePublic(t, key)}
	image := strings.TrimPrefix(srv.URL, "http://") + "/library/app@" + variant.String()
	out, code := f.verify(t, "--key", f.key, "--plain-http", "--upstream", up.URL, image)
	if !strings.Contains(out, "predicate    OK") {
		t.Fatalf("the attestation was not read\n%s", out)
	}
	if code != 0 {
		t.Fatalf("status %d for the variant regnorm made under its maxLayerSize, want 0 (or a way to give verify that limit)\n%s", code, out)
	}
}
