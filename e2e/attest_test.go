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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// derivationType is regnorm's predicate type (docs/signatures.md).
const derivationType = "https://regnorm.dev/attestations/derivation/v1"

// TestCosignVerifiesVariantAttestation: a variant regnorm made (an
// octet-stream config, for containerd 1.6.8) carries regnorm's derivation
// attestation, signed with the key the operator configured, in both of
// cosign's formats: through regnorm, cosign v3 verify-attestation --key
// passes for the variant's digest, offline, reading cosign v3's bundle
// (its default, --new-bundle-format=true: found through the referrers
// API) and the classic .att tag (--new-bundle-format=false); with another
// key each fails, and so does each with one byte of its statement changed
// (a relay in front of regnorm serves the changed attestation: under the
// .att tag, or listed by the referrers API under a new manifest, its
// manifest pointing at the changed blob, so that only the signature can
// tell). The relay records what cosign read: the bundle's blob, or the tag.
func TestCosignVerifiesVariantAttestation(t *testing.T) {
	registryURL, _ := startRegistry(t)
	img := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	dir := t.TempDir()
	writeAttestationKey(t, dir, "regnorm")
	writeAttestationKey(t, dir, "other")
	proxyURL, proc := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")

	// The variant containerd 1.6.8 gets, by tag.
	variant := pullVariant(t, proxyURL, "library/legacy", img)
	// What attesting cost (time, bytes stored), as regnorm logs it.
	if line := regexp.MustCompile(`.*"attested variant".*`).FindString(proc.out.String()); line != "" {
		t.Logf("regnorm: %s", line)
	} else {
		t.Errorf("regnorm logged no attestation:\n%s", proc.out.tail(4<<10))
	}
	referrersPath := "/v2/library/legacy/referrers/" + variant.String()
	var listed ocispec.Index
	if err := json.Unmarshal(getBody(t, proxyURL+referrersPath), &listed); err != nil || len(listed.Manifests) != 2 ||
		listed.Manifests[0].ArtifactType != "application/vnd.dsse.envelope.v1+json" || listed.Manifests[1].ArtifactType != cosignBundleType {
		t.Fatalf("referrers of the variant: %v %+v, want the classic attestation and the bundle", err, listed.Manifests)
	}
	var bundleManifest ocispec.Manifest
	json.Unmarshal(getBody(t, proxyURL+"/v2/library/legacy/manifests/"+listed.Manifests[1].Digest.String()), &bundleManifest)
	if len(bundleManifest.Layers) != 1 {
		t.Fatalf("bundle manifest %+v", bundleManifest)
	}

	// The relay: what cosign reads goes through it.
	target, _ := url.Parse(proxyURL)
	relayed := httputil.NewSingleHostReverseProxy(target)
	att := regexp.MustCompile(`^/v2/library/legacy/manifests/sha256-[0-9a-f]{64}\.att$`)
	var mu sync.Mutex
	var tamper string // "", "classic" or "bundle"
	var read []string
	blobs, manifests := map[string][]byte{}, map[string][]byte{}
	var changedRead bool
	serve := func(w http.ResponseWriter, r *http.Request, contentType string, b []byte) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
		if r.Method == http.MethodGet {
			w.Write(b)
		}
	}
	// change changes one byte of the statement in the envelope at
	// payload (a DSSE envelope, or a bundle's dsseEnvelope), and stores
	// the blob that holds it; it returns its digest and size.
	change := func(blob []byte, inBundle bool) (digest.Digest, int64) {
		var doc map[string]any
		json.Unmarshal(blob, &doc)
		env := doc
		if inBundle {
			env = doc["dsseEnvelope"].(map[string]any)
		}
		p, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
		// "docker.io" -> "docker.ip": a byte of the predicate.
		p = bytes.Replace(p, []byte(`"upstream":"docker.io"`), []byte(`"upstream":"docker.ip"`), 1)
		env["payload"] = base64.StdEncoding.EncodeToString(p)
		out, _ := json.Marshal(doc)
		blobs[digest.FromBytes(out).String()] = out
		return digest.FromBytes(out), int64(len(out))
	}
	relay := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		read = append(read, r.URL.Path)
		_, last, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/library/legacy/"), "/")
		switch {
		case tamper == "classic" && att.MatchString(r.URL.Path):
			manifest, env := fetchAttestation(t, proxyURL, r.URL.Path)
			manifest.Layers[0].Digest, manifest.Layers[0].Size = change(env, false)
			b, _ := json.Marshal(manifest)
			serve(w, r, ocispec.MediaTypeImageManifest, b)
		case tamper == "bundle" && r.URL.Path == referrersPath:
			list := listed
			list.Manifests = slices.Clone(listed.Manifests)
			m := bundleManifest
			m.Layers = slices.Clone(bundleManifest.Layers)
			m.Layers[0].Digest, m.Layers[0].Size = change(getBody(t, proxyURL+"/v2/library/legacy/blobs/"+bundleManifest.Layers[0].Digest.String()), true)
			b, _ := json.Marshal(m)
			manifests[digest.FromBytes(b).String()] = b
			list.Manifests[1].Digest, list.Manifests[1].Size = digest.FromBytes(b), int64(len(b))
			lb, _ := json.Marshal(list)
			serve(w, r, ocispec.MediaTypeImageIndex, lb)
		case manifests[last] != nil && strings.Contains(r.URL.Path, "/manifests/"):
			serve(w, r, ocispec.MediaTypeImageManifest, manifests[last])
		case blobs[last] != nil && strings.Contains(r.URL.Path, "/blobs/"):
			changedRead = true
			serve(w, r, "application/octet-stream", blobs[last])
		default:
			relayed.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(relay.Close)
	relayHost := strings.TrimPrefix(relay.URL, "http://")

	verify := func(key, format string) (string, error) {
		t.Helper()
		cmd := exec.Command(cosignBin, "verify-attestation", "--key", key, "--type", derivationType, "--insecure-ignore-tlog=true",
			"--allow-http-registry", "--new-bundle-format="+strconv.FormatBool(format == "bundle"), relayHost+"/library/legacy@"+variant.String())
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, format := range []string{"bundle", "classic"} {
		// What cosign must read of this format.
		mark := "/v2/library/legacy/blobs/" + bundleManifest.Layers[0].Digest.String()
		if format == "classic" {
			mark = "/v2/library/legacy/manifests/" + strings.Replace(variant.String(), ":", "-", 1) + ".att"
		}
		mu.Lock()
		tamper, read, changedRead = "", nil, false
		mu.Unlock()
		out, err := verify("regnorm.pub", format)
		if err != nil {
			t.Fatalf("%s: cosign verify-attestation through regnorm: %v\n%s\nregnorm:\n%s", format, err, out, proc.out.tail(4<<10))
		}
		mu.Lock()
		if !slices.Contains(read, mark) {
			t.Errorf("%s: cosign passed without reading %s: %v", format, mark, read)
		}
		mu.Unlock()
		// cosign prints the verified envelope; its statement is regnorm's.
		if !strings.Contains(out, `"payloadType":"application/vnd.in-toto+json"`) {
			t.Errorf("%s: cosign printed no in-toto envelope:\n%s", format, out)
		}
		t.Logf("%s: cosign verify-attestation --key regnorm.pub passed:\n%s", format, lastLines(out, 4))
		if out, err := verify("other.pub", format); err == nil {
			t.Fatalf("%s: verify-attestation with another key passed:\n%s", format, out)
		} else {
			t.Logf("%s: another key: %v\n%s", format, err, lastLines(out, 2))
		}
		mu.Lock()
		tamper = format
		mu.Unlock()
		out, err = verify("regnorm.pub", format)
		mu.Lock()
		served := changedRead
		mu.Unlock()
		if err == nil {
			t.Fatalf("%s: verify-attestation of a changed statement passed:\n%s", format, out)
		}
		if !served {
			t.Fatalf("%s: cosign never read the changed attestation (%v):\n%s", format, err, out)
		}
		t.Logf("%s: a byte changed: %v\n%s", format, err, lastLines(out, 2))
	}
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
