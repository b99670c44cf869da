//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestRegnormVerifyOriginalKey: `regnorm verify --original-key` checks the
// vendor's cosign signature of the original a variant's attestation names,
// as cosign v3 writes it: its default bundle (found through the referrers
// API of an upstream that has one, go-containerregistry's registry, and
// through the tag schema's sha256-<hex> index on distribution's, which has
// none) and the classic sha256-<hex>.sig (--new-bundle-format=false).
// Signed with the vendor's key, it passes (exit 0); with another key given,
// unsigned, or signed with a signature of another image copied beside it
// (a classic .sig, or a bundle whose artifact names the original as its
// subject), it fails with exit 4.
func TestRegnormVerifyOriginalKey(t *testing.T) {
	dir := t.TempDir()
	writeAttestationKey(t, dir, "regnorm")
	cosign := cosignIn(t, dir, "vendor", "other")

	ggcr := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(ggcr.Close)
	distribution, _ := startRegistry(t)
	for _, up := range []struct {
		name, url string
		referrers bool // the upstream has the referrers API
	}{{"referrers API", ggcr.URL, true}, {"tag schema", distribution, false}} {
		t.Run(up.name, func(t *testing.T) {
			host := strings.TrimPrefix(up.url, "http://")
			sign := func(repo string, dgst digest.Digest, extra ...string) {
				t.Helper()
				args := append([]string{"sign", "--key", "vendor/cosign.key", "--use-signing-config=false", "--tlog-upload=false", "-y", "--allow-http-registry"}, extra...)
				if out, err := cosign(append(args, host+"/"+repo+"@"+dgst.String())...); err != nil {
					t.Fatalf("sign %s: %v\n%s", repo, err, out)
				}
			}
			client := &regtest.Client{Base: up.url}
			// The original: a config typed octet-stream, which regnorm
			// rewrites for containerd 1.6.8. Another image, signed, whose
			// signature is copied beside it.
			original := pushHello(t, up.url, "vendor/bundle", "v1", legacyConfig)
			pushHello(t, up.url, "vendor/classic", "v1", legacyConfig)
			pushHello(t, up.url, "vendor/none", "v1", legacyConfig)
			pushHello(t, up.url, "vendor/copied-sig", "v1", legacyConfig)
			another := pushAnother(t, up.url, "vendor/copied-sig")
			sign("vendor/bundle", original.ManifestDigest)
			sign("vendor/classic", original.ManifestDigest, "--new-bundle-format=false")
			sign("vendor/copied-sig", another.ManifestDigest, "--new-bundle-format=false")
			ctx := context.Background()
			sigTag := func(d digest.Digest) string { return "sha256-" + d.Encoded() + ".sig" }
			copied := getBody(t, up.url+"/v2/vendor/copied-sig/manifests/"+sigTag(another.ManifestDigest))
			if err := client.PushManifest(ctx, "vendor/copied-sig", sigTag(original.ManifestDigest), ocispec.MediaTypeImageManifest, copied); err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				repo, key string
				want      int
				out       string
			}{
				{"vendor/bundle", "vendor", 0, "original-sig OK   bundle sha256:"},
				{"vendor/bundle", "other", 4, "does not verify"},
				{"vendor/classic", "vendor", 0, "original-sig OK   signature sha256:"},
				{"vendor/classic", "other", 4, "does not verify"},
				{"vendor/none", "vendor", 4, "no cosign signature"},
				{"vendor/copied-sig", "vendor", 4, "signed, but of another digest: the payload names \"" + another.ManifestDigest.String()},
			}
			if up.referrers {
				// A bundle of another image, in an artifact whose subject
				// is the original: listed among its referrers.
				pushHello(t, up.url, "vendor/copied-bundle", "v1", legacyConfig)
				pushAnother(t, up.url, "vendor/copied-bundle")
				sign("vendor/copied-bundle", another.ManifestDigest)
				copyReferrer(t, client, up.url, "vendor/copied-bundle", another.ManifestDigest, original)
				cases = append(cases, struct {
					repo, key string
					want      int
					out       string
				}{"vendor/copied-bundle", "vendor", 4, "signed, but of another digest: the statement's subjects"})
			}

			proxyURL, proc := startRegnorm(t, up.url, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")
			proxyHost := strings.TrimPrefix(proxyURL, "http://")
			for _, tc := range cases {
				variant := variantFor(t, proxyURL, tc.repo, "v1", "1.6.8")
				image := proxyHost + "/" + tc.repo + "@" + variant
				cmd := exec.Command(regnormBin, "verify", "--plain-http", "--upstream", up.url, "--key", filepath.Join(dir, "regnorm.pub"),
					"--original-key", filepath.Join(dir, tc.key, "cosign.pub"), image)
				b, err := cmd.CombinedOutput()
				out, code := string(b), 0
				var ee *exec.ExitError
				switch {
				case errors.As(err, &ee):
					code = ee.ExitCode()
				case err != nil:
					t.Fatal(err)
				}
				if code != tc.want || !strings.Contains(out, tc.out) {
					t.Errorf("%s, original key %s: exit %d, want %d with %q\n%s\nregnorm:\n%s", tc.repo, tc.key, code, tc.want, tc.out, out, proc.out.tail(2<<10))
					continue
				}
				if tc.want == 0 && !strings.Contains(out, "rederived    OK") {
					t.Errorf("%s: verified without re-deriving:\n%s", tc.repo, out)
				}
				t.Logf("regnorm verify --original-key %s/cosign.pub %s: exit %d\n%s", tc.key, image, code, lastLines(out, 3))
			}
		})
	}
}

// pushAnother pushes, as repo:another, an image that is neither the
// original nor its variant.
func pushAnother(t *testing.T, registryURL, repo string) regtest.Image {
	t.Helper()
	return pushHelloWith(t, registryURL, repo, "another", regtest.ImageOptions{}, []regtest.File{{Name: "another", Content: []byte("another image\n")}})
}

// variantFor is the digest regnorm answers repo:tag with for a containerd
// of version client, which must be a variant.
func variantFor(t *testing.T, proxyURL, repo, tag, client string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, proxyURL+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("User-Agent", "containerd/"+client)
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest,
		"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json"}, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	variant := resp.Header.Get("Docker-Content-Digest")
	if resp.StatusCode != http.StatusOK || variant == "" {
		t.Fatalf("%s:%s for containerd %s: %d %q", repo, tag, client, resp.StatusCode, variant)
	}
	return variant
}

// copyReferrer pushes, in repo, the first cosign bundle artifact of from
// again with subject as its subject: a signature of one image that a
// registry lists among another's referrers.
func copyReferrer(t *testing.T, client *regtest.Client, base, repo string, from digest.Digest, subject regtest.Image) {
	t.Helper()
	var list ocispec.Index
	if err := json.Unmarshal(getBody(t, base+"/v2/"+repo+"/referrers/"+from.String()), &list); err != nil || len(list.Manifests) == 0 {
		t.Fatalf("referrers of %s: %v %+v", from, err, list)
	}
	b := getBody(t, base+"/v2/"+repo+"/manifests/"+list.Manifests[0].Digest.String())
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var typed struct {
		MediaType string `json:"mediaType"`
	}
	json.Unmarshal(subject.Manifest, &typed)
	m["subject"] = map[string]any{"mediaType": typed.MediaType, "digest": subject.ManifestDigest.String(), "size": len(subject.Manifest)}
	out, _ := json.Marshal(m)
	if bytes.Equal(out, b) {
		t.Fatal("the subject did not change")
	}
	if err := client.PushManifest(context.Background(), repo, digest.FromBytes(out).String(), ocispec.MediaTypeImageManifest, out); err != nil {
		t.Fatal(err)
	}
}
