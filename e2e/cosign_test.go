//go:build e2e

package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// cosignBundleType is the artifact type of cosign v3's signatures (the
// sigstore bundle), which it finds through the referrers API.
const cosignBundleType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// TestCosignVerifyThroughRegnorm: images signed with a key in the upstream
// registry, offline (no transparency log), verify through regnorm with
// cosign v3: one signed in cosign v3's bundle format, which cosign finds
// through the referrers API (regnorm answers it from the registry's tag
// schema: distribution's registry has no referrers API), and one signed
// in the classic format (the sha256-<hex>.sig tag). Another key, and an
// unsigned image, fail. regnorm's referrers answer lists the bundle.
func TestCosignVerifyThroughRegnorm(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	// One image (one digest) in three repositories: what is signed is
	// signed in a repository, and regnorm's answers are each repository's.
	bundled := pushHello(t, registryURL, "signed/bundle", "v1", regtest.ImageOptions{})
	classic := pushHello(t, registryURL, "signed/classic", "v1", regtest.ImageOptions{})
	unsigned := pushHello(t, registryURL, "signed/none", "v1", regtest.ImageOptions{})
	proxyURL, _ := startRegnorm(t, registryURL, "")
	proxyHost := strings.TrimPrefix(proxyURL, "http://")

	dir := t.TempDir()
	cosign := cosignIn(t, dir, "vendor", "other")
	sign := func(img regtest.Image, repo string, extra ...string) {
		t.Helper()
		args := append([]string{"sign", "--key", "vendor/cosign.key", "--use-signing-config=false", "--tlog-upload=false", "-y",
			"--allow-http-registry"}, extra...)
		if out, err := cosign(append(args, registryHost+"/"+repo+"@"+img.ManifestDigest.String())...); err != nil {
			t.Fatalf("sign %s: %v\n%s", repo, err, out)
		}
	}
	sign(bundled, "signed/bundle")
	sign(classic, "signed/classic", "--new-bundle-format=false")

	verify := func(key, repo string, img regtest.Image) (string, error) {
		t.Helper()
		return cosign("verify", "--key", key, "--insecure-ignore-tlog=true", "--allow-http-registry",
			proxyHost+"/"+repo+"@"+img.ManifestDigest.String())
	}
	for _, tt := range []struct {
		repo string
		img  regtest.Image
	}{{"signed/bundle", bundled}, {"signed/classic", classic}} {
		out, err := verify("vendor/cosign.pub", tt.repo, tt.img)
		if err != nil {
			t.Fatalf("verify %s through regnorm: %v\n%s", tt.repo, err, out)
		}
		t.Logf("cosign verify %s through regnorm passed", tt.repo)
		if out, err := verify("other/cosign.pub", tt.repo, tt.img); err == nil {
			t.Fatalf("verify %s with another key passed:\n%s", tt.repo, out)
		}
	}
	if out, err := verify("vendor/cosign.pub", "signed/none", unsigned); err == nil {
		t.Fatalf("verify of an unsigned image passed:\n%s", out)
	}
	// cosign asked regnorm's referrers API (and would fall back to the tag
	// schema through the manifest path itself on a 404).
	if n := metric(t, proxyURL, "regnorm_http_requests_total", `route="referrers"`, `code="200"`); n == 0 {
		t.Fatal("cosign never got a referrers answer from regnorm")
	}

	// What cosign found: the bundle, listed by regnorm's referrers answer.
	resp, err := http.Get(proxyURL + "/v2/signed/bundle/referrers/" + bundled.ManifestDigest.String() + "?artifactType=" + url.QueryEscape(cosignBundleType))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var idx ocispec.Index
	if err := json.NewDecoder(resp.Body).Decode(&idx); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("referrers: %d %v", resp.StatusCode, err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].ArtifactType != cosignBundleType || resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("referrers %+v (OCI-Filters-Applied %q), want the one bundle", idx.Manifests, resp.Header.Get("OCI-Filters-Applied"))
	}
	// Served byte for byte: the digest the list names is the bundle's.
	bundle := getBody(t, proxyURL+"/v2/signed/bundle/manifests/"+idx.Manifests[0].Digest.String())
	if digest.FromBytes(bundle) != idx.Manifests[0].Digest {
		t.Fatalf("the bundle's manifest came as %s, not %s", digest.FromBytes(bundle), idx.Manifests[0].Digest)
	}
}

// cosignIn runs the suite's cosign in dir, after making a password-less key
// pair in each of keys (dir/<key>/cosign.key and .pub). sigstore's caches
// are kept in dir: nothing is asked of sigstore's public services.
func cosignIn(t *testing.T, dir string, keys ...string) func(args ...string) (string, error) {
	t.Helper()
	cosign := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(cosignBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, sub := range keys {
		os.Mkdir(filepath.Join(dir, sub), 0o700)
		if out, err := cosign("generate-key-pair", "--output-key-prefix", filepath.Join(sub, "cosign")); err != nil {
			t.Fatalf("generate-key-pair: %v\n%s", err, out)
		}
	}
	return cosign
}
