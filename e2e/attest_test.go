//go:build e2e

package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// derivationType is regnorm's predicate type (docs/signatures.md).
const derivationType = "https://regnorm.dev/attestations/derivation/v1"

// TestCosignVerifiesVariantAttestation: a variant regnorm made (an
// octet-stream config, for containerd 1.6.8) carries regnorm's derivation
// attestation, signed with the key the operator configured: through
// regnorm, cosign v3 verify-attestation --key passes for the variant's
// digest, offline; another key fails; and so does the attestation with one
// byte of its statement changed (a relay in front of regnorm serves it
// under cosign's .att tag, its manifest pointing at the changed envelope).
func TestCosignVerifiesVariantAttestation(t *testing.T) {
	registryURL, _ := startRegistry(t)
	img := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	dir := t.TempDir()
	writeAttestationKey(t, dir, "regnorm")
	writeAttestationKey(t, dir, "other")
	proxyURL, proc := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")
	proxyHost := strings.TrimPrefix(proxyURL, "http://")

	// The variant containerd 1.6.8 gets, by tag.
	req, _ := http.NewRequest(http.MethodGet, proxyURL+"/v2/library/legacy/manifests/v1", nil)
	req.Header.Set("User-Agent", "containerd/1.6.8")
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	variant := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if resp.StatusCode != http.StatusOK || variant == "" || variant == img.ManifestDigest {
		t.Fatalf("no variant: %d %q (original %s)", resp.StatusCode, variant, img.ManifestDigest)
	}

	cosign := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(cosignBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	verify := func(key, host string) (string, error) {
		t.Helper()
		return cosign("verify-attestation", "--key", key, "--type", derivationType, "--insecure-ignore-tlog=true",
			"--allow-http-registry", host+"/library/legacy@"+variant.String())
	}
	out, err := verify("regnorm.pub", proxyHost)
	if err != nil {
		t.Fatalf("cosign verify-attestation through regnorm: %v\n%s\nregnorm:\n%s", err, out, proc.out.tail(4<<10))
	}
	t.Logf("cosign verify-attestation --key regnorm.pub passed:\n%s", out)
	// What attesting cost (time, bytes stored), as regnorm logs it.
	if line := regexp.MustCompile(`.*"attested variant".*`).FindString(proc.out.String()); line != "" {
		t.Logf("regnorm: %s", line)
	} else {
		t.Errorf("regnorm logged no attestation:\n%s", proc.out.tail(4<<10))
	}
	// cosign prints the verified envelope; its statement is regnorm's.
	if !strings.Contains(out, `"payloadType":"application/vnd.in-toto+json"`) {
		t.Errorf("cosign printed no in-toto envelope:\n%s", out)
	}
	if out, err := verify("other.pub", proxyHost); err == nil {
		t.Fatalf("verify-attestation with another key passed:\n%s", out)
	} else {
		t.Logf("another key: %v\n%s", err, lastLines(out, 3))
	}

	// A relay that changes one byte of the statement, and serves a
	// manifest that names the changed envelope (so that only the
	// signature can tell).
	target, _ := url.Parse(proxyURL)
	relayed := httputil.NewSingleHostReverseProxy(target)
	att := regexp.MustCompile(`^/v2/library/legacy/manifests/sha256-[0-9a-f]{64}\.att$`)
	var changed []byte
	var changedDigest digest.Digest
	relay := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case att.MatchString(r.URL.Path):
			manifest, env := fetchAttestation(t, proxyURL, r.URL.Path)
			var e struct {
				PayloadType string            `json:"payloadType"`
				Payload     string            `json:"payload"`
				Signatures  []json.RawMessage `json:"signatures"`
			}
			json.Unmarshal(env, &e)
			p, _ := base64.StdEncoding.DecodeString(e.Payload)
			// "docker.io" -> "docker.ip": a byte of the predicate.
			p = bytes.Replace(p, []byte(`"upstream":"docker.io"`), []byte(`"upstream":"docker.ip"`), 1)
			e.Payload = base64.StdEncoding.EncodeToString(p)
			changed, _ = json.Marshal(e)
			changedDigest = digest.FromBytes(changed)
			manifest.Layers[0].Digest, manifest.Layers[0].Size = changedDigest, int64(len(changed))
			b, _ := json.Marshal(manifest)
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
			if r.Method == http.MethodGet {
				w.Write(b)
			}
		case changedDigest != "" && strings.HasSuffix(r.URL.Path, "/blobs/"+changedDigest.String()):
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Docker-Content-Digest", changedDigest.String())
			w.Write(changed)
		default:
			relayed.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(relay.Close)
	out, err = verify("regnorm.pub", strings.TrimPrefix(relay.URL, "http://"))
	if err == nil {
		t.Fatalf("verify-attestation of a changed statement passed:\n%s", out)
	}
	if changed == nil || !bytes.Contains(mustDecodePayload(t, changed), []byte("docker.ip")) {
		t.Fatalf("cosign never read the changed attestation (%v):\n%s", err, out)
	}
	t.Logf("a byte changed: %v\n%s", err, lastLines(out, 3))
}

// writeAttestationKey writes an ECDSA P-256 key pair into dir, as openssl
// would: name.key (PKCS #8, what attestations.keyFile takes) and name.pub
// (PKIX, what cosign --key takes).
func writeAttestationKey(t *testing.T, dir, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+".pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// fetchAttestation reads the attestation manifest at path from regnorm,
// and its envelope.
func fetchAttestation(t *testing.T, base, path string) (ocispec.Manifest, []byte) {
	var m ocispec.Manifest
	if err := json.Unmarshal(getBody(t, base+path), &m); err != nil || len(m.Layers) != 1 {
		t.Errorf("attestation manifest: %v", err)
		return m, nil
	}
	resp, err := http.Get(base + "/v2/library/legacy/blobs/" + m.Layers[0].Digest.String())
	if err != nil {
		t.Error(err)
		return m, nil
	}
	defer resp.Body.Close()
	env, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return m, env
}

func mustDecodePayload(t *testing.T, env []byte) []byte {
	t.Helper()
	var e struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	p, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// lastLines is s's last n lines.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
