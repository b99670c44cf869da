//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// kyvernoBin is the Kyverno CLI (kubectl-kyverno), which applies the worked
// policy of docs/signatures.md.
var kyvernoBin = os.Getenv("REGNORM_KYVERNO_BIN")

// mirrorName is the mirror's name in the worked policy, served over TLS: the
// test's Kyverno reaches it through kyvernoRelay, its HTTPS proxy.
const mirrorName = "regnorm.example.internal"

// TestKyvernoPolicyAcceptsOriginalAndVariant: the worked ImageValidatingPolicy
// of docs/signatures.md (testdata/kyverno/policy.yaml, which the docs hold
// verbatim), applied by the real Kyverno CLI to Pods, reading the images'
// signatures and attestations through regnorm (its HTTP proxy sends the
// policy's mirror name to regnorm; nothing else is reached). Admitted: the
// vendor-signed original; regnorm's variant of it (regnorm's attestation in
// cosign's bundle format, its predicate naming docker.io and the image's
// repository), by the upstream's name or the mirror's; Pods with the variant
// (once or twice) and then the original (what deadlocks Kyverno 1.19.1 when
// a policy fetches an image after it read one twice). Refused: the variant
// attested by a regnorm with another key; the variant with one byte of its
// attestation's statement changed; an original signed with another key (the
// same bytes, in another repository); an unsigned image; the variant and then
// an unsigned image. Also admitted, as the docs say: regnorm's variant of an
// original the vendor did not sign (the policy cannot check the original's
// signature in Kyverno 1.19.1); `regnorm verify --original-key` refuses it
// (exit 4) and accepts the vendor-signed one's variant.
func TestKyvernoPolicyAcceptsOriginalAndVariant(t *testing.T) {
	began := time.Now()
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	// Images regnorm fixes for containerd 1.6.8 (an octet-stream config).
	signed := pushHello(t, registryURL, "library/signed", "v1", legacyConfig)
	otherSigned := pushHello(t, registryURL, "library/othersigned", "v1", legacyConfig)
	unsigned := pushHello(t, registryURL, "library/unsigned", "v1", legacyConfig)

	dir := t.TempDir()
	// The policy's keys: the vendor's (cosign's format, no password) and
	// regnorm's (PKCS #8), the test's own, whose public halves the policy holds.
	for _, name := range []string{"vendor.key", "vendor.pub", "regnorm.key", "regnorm.pub", "policy.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", "kyverno", name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b, 0o600)
	}
	writeAttestationKey(t, dir, "other-regnorm")
	cosign := func(args ...string) {
		t.Helper()
		cmd := exec.Command(cosignBin, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cosign %s: %v\n%s", args[0], err, out)
		}
	}
	cosign("generate-key-pair", "--output-key-prefix", "other-vendor")
	// Signed in the upstream, in cosign's classic format (the policy reads
	// it through regnorm, which serves the upstream's bytes).
	sign := func(key, repo string, img regtest.Image) {
		t.Helper()
		cosign("sign", "--key", key, "--use-signing-config=false", "--tlog-upload=false", "-y", "--allow-http-registry",
			"--new-bundle-format=false", registryHost+"/"+repo+"@"+img.ManifestDigest.String())
	}
	sign("vendor.key", "library/signed", signed)
	sign("other-vendor.key", "library/othersigned", otherSigned)

	regnormURL, _ := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")
	otherURL, _ := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "other-regnorm.key")+"\n")
	// The variants containerd 1.6.8 gets, by tag: each is attested there.
	variant := pullVariant(t, regnormURL, "library/signed", signed)
	otherVariant := pullVariant(t, regnormURL, "library/othersigned", otherSigned)
	if got := pullVariant(t, otherURL, "library/signed", signed); got != variant {
		t.Fatalf("the other regnorm made %s of library/signed, this one %s", got, variant)
	}

	relay := startKyvernoRelay(t, dir)
	original := "docker.io/library/signed@" + signed.ManifestDigest.String()
	variantImage := "docker.io/library/signed@" + variant.String()

	for _, tt := range []struct {
		name   string
		mirror string // the regnorm the policy's mirror name reaches
		tamper bool   // change a byte of the statement in the variant's bundle
		images []string
		pass   bool
	}{
		{"original", regnormURL, false, []string{original}, true},
		{"variant", regnormURL, false, []string{variantImage}, true},
		{"variant by the mirror's name", regnormURL, false, []string{mirrorName + "/library/signed@" + variant.String()}, true},
		{"variant, then the original", regnormURL, false, []string{variantImage, original}, true},
		{"variant twice, then the original", regnormURL, false, []string{variantImage, variantImage, original}, true},
		// The policy's limit in Kyverno 1.19.1 (docs/signatures.md): it
		// does not check the original's signature; regnorm verify
		// --original-key does, below.
		{"variant of an original signed with another key", regnormURL, false, []string{"docker.io/library/othersigned@" + otherVariant.String()}, true},
		{"variant attested with another key", otherURL, false, []string{variantImage}, false},
		{"variant with a byte of its attestation changed", regnormURL, true, []string{variantImage}, false},
		{"original signed with another key", regnormURL, false, []string{"docker.io/library/othersigned@" + otherSigned.ManifestDigest.String()}, false},
		{"unsigned", regnormURL, false, []string{"docker.io/library/unsigned@" + unsigned.ManifestDigest.String()}, false},
		{"variant, then an unsigned image", regnormURL, false, []string{variantImage, "docker.io/library/unsigned@" + unsigned.ManifestDigest.String()}, false},
	} {
		relay.reset(tt.mirror, tt.tamper)
		os.WriteFile(filepath.Join(dir, "pod.yaml"), []byte(podYAML(tt.images...)), 0o600)
		// A bound, not a verdict: a run that does not end in time fails the
		// case (Kyverno 1.19.1 deadlocks on some policies: docs/signatures.md).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, kyvernoBin, "apply", "policy.yaml", "--resource", "pod.yaml", "--remove-color")
		cmd.Dir = dir
		// Kyverno's registry client takes its proxy from the environment;
		// loopback would bypass it, the mirror's name does not.
		cmd.Env = append(os.Environ(), "HOME="+dir, "SSL_CERT_FILE="+relay.ca, "HTTP_PROXY="+relay.url,
			"HTTPS_PROXY="+relay.url, "NO_PROXY=", "http_proxy=", "https_proxy=", "no_proxy=")
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
		timedOut := ctx.Err() != nil
		cancel()
		exit := 0
		if err != nil {
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("%s: %v", tt.name, err)
			}
			exit = ee.ExitCode()
		}
		want, wantExit := "pass: 1, fail: 0, warn: 0, error: 0, skip: 0", 0
		if !tt.pass {
			want, wantExit = "pass: 0, fail: 1, warn: 0, error: 0, skip: 0", 1
		}
		switch {
		case timedOut:
			t.Errorf("%s (%s): kubectl-kyverno apply did not end in %v (a deadlock?):\n%s\nrelay: %s", tt.name, tt.images, took.Round(time.Second), out, relay.summary())
			continue
		case exit != wantExit || !strings.Contains(string(out), want):
			t.Errorf("%s (%s): kubectl-kyverno apply exited %d, want %d and %q:\n%s\nrelay: %s",
				tt.name, tt.images, exit, wantExit, want, out, relay.summary())
			continue
		}
		if hosts := relay.otherHosts(); len(hosts) > 0 {
			t.Errorf("%s: Kyverno asked %v, not only the mirror", tt.name, hosts)
		}
		if relay.forwarded() == 0 {
			t.Errorf("%s: Kyverno read nothing through regnorm", tt.name)
		}
		if tt.tamper && !relay.changedRead() {
			t.Errorf("%s: Kyverno did not read the changed bundle:\n%s", tt.name, relay.summary())
		}
		t.Logf("%s: exit %d in %v, %d requests to regnorm; %s", tt.name, exit, took.Round(10*time.Millisecond), relay.forwarded(), lastLines(string(out), 1))
	}

	// What the policy leaves out, offline: the original's signature.
	for _, tt := range []struct {
		repo    string
		variant digest.Digest
		want    int
	}{
		{"library/signed", variant, 0},
		{"library/othersigned", otherVariant, 4},
	} {
		cmd := exec.Command(regnormBin, "verify", "--plain-http", "--upstream", registryURL, "--key", filepath.Join(dir, "regnorm.pub"),
			"--original-key", filepath.Join(dir, "vendor.pub"), strings.TrimPrefix(regnormURL, "http://")+"/"+tt.repo+"@"+tt.variant.String())
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tt.want {
			t.Errorf("regnorm verify --original-key vendor.pub %s@%s: exit %d, want %d\n%s", tt.repo, tt.variant, code, tt.want, out)
			continue
		}
		t.Logf("regnorm verify --original-key vendor.pub %s@%s: exit %d; %s", tt.repo, tt.variant, code, lastLines(string(out), 1))
	}
	t.Logf("test took %v", time.Since(began).Round(100*time.Millisecond))
}

// pullVariant asks regnorm at base for repo:v1 as containerd 1.6.8 does, and
// returns the variant's digest once its attestation (cosign's .att tag) is
// there.
func pullVariant(t *testing.T, base, repo string, img regtest.Image) digest.Digest {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/v1", nil)
	req.Header.Set("User-Agent", "containerd/1.6.8")
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	variant := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if resp.StatusCode != http.StatusOK || variant == "" || variant == img.ManifestDigest {
		t.Fatalf("no variant of %s: %d %q (original %s)", repo, resp.StatusCode, variant, img.ManifestDigest)
	}
	att := base + "/v2/" + repo + "/manifests/sha256-" + variant.Encoded() + ".att"
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Head(att)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return variant
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no attestation of %s@%s at %s", repo, variant, att)
		}
	}
}

// podYAML is a Pod with one container for each image.
func podYAML(images ...string) string {
	pod := `apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: default
spec:
  containers:
`
	for i, image := range images {
		pod += fmt.Sprintf("  - name: app%d\n    image: %s\n", i, image)
	}
	return pod
}

// kyvernoRelay is the HTTP proxy of the test's Kyverno: a CONNECT to the
// policy's mirror name (port 443) is tunnelled to a TLS server with a
// certificate for that name (Kyverno trusts it through SSL_CERT_FILE), which
// forwards to the regnorm the relay is set to; anything else (another host,
// plain HTTP) is refused and recorded.
type kyvernoRelay struct {
	url string // the proxy's URL
	ca  string // the file of the certificate to trust

	mu            sync.Mutex
	target        *url.URL
	tamper        bool
	changed       map[string][]byte // by digest: the tampered manifests and blobs
	changedType   map[string]string
	servedChanged bool
	n             int
	others        map[string]int
	log           bytes.Buffer
}

func startKyvernoRelay(t *testing.T, dir string) *kyvernoRelay {
	t.Helper()
	r := &kyvernoRelay{ca: filepath.Join(dir, "mirror-ca.pem")}
	certPEM, keyPEM := regtest.SelfSigned(t, "regnorm test mirror", mirrorName)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(r.ca, certPEM, 0o644)
	mirror := httptest.NewUnstartedServer(http.HandlerFunc(r.forward))
	mirror.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	mirror.StartTLS()
	t.Cleanup(mirror.Close)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodConnect || req.Host != mirrorName+":443" {
			r.mu.Lock()
			r.others[req.Method+" "+req.Host]++
			r.log.WriteString(req.Method + " " + req.Host + " refused\n")
			r.mu.Unlock()
			http.Error(w, "not the mirror", http.StatusBadGateway)
			return
		}
		upstream, err := net.Dial("tcp", mirror.Listener.Addr().String())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			upstream.Close()
			return
		}
		rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		rw.Flush()
		go func() { io.Copy(upstream, rw); upstream.Close() }()
		io.Copy(conn, upstream)
		conn.Close()
	}))
	t.Cleanup(proxy.Close)
	r.url = proxy.URL
	return r
}

// reset points the mirror name at target, changes a byte of the statement
// in each bundle that lists of referrers name if tamper, and forgets what was
// asked.
func (r *kyvernoRelay) reset(target string, tamper bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target, _ = url.Parse(target)
	r.tamper, r.changed, r.changedType = tamper, map[string][]byte{}, map[string]string{}
	r.n, r.others, r.servedChanged = 0, map[string]int{}, false
	r.log.Reset()
}

// forward serves the mirror name: a reverse proxy to the target regnorm, or,
// when tampering, the changed lists, manifests and blobs.
func (r *kyvernoRelay) forward(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.n++
	r.log.WriteString(req.Method + " " + req.URL.RequestURI() + "\n")
	target := r.target
	last := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
	var body []byte
	var contentType string
	var err error
	switch {
	case r.changed[last] != nil:
		body, contentType = r.changed[last], r.changedType[last]
		r.servedChanged = r.servedChanged || strings.Contains(req.URL.Path, "/blobs/")
	case r.tamper && strings.Contains(req.URL.Path, "/referrers/"):
		body, contentType = nil, ocispec.MediaTypeImageIndex
		if body, err = r.tamperReferrers(req); err != nil {
			r.log.WriteString("tampering: " + err.Error() + "\n")
		}
	}
	r.mu.Unlock()
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadGateway)
	case body != nil:
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		w.Header().Set("Content-Type", contentType)
		if req.Method == http.MethodGet {
			w.Write(body)
		}
	default:
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, req)
	}
}

// tamperReferrers reads the target's list of referrers that req asks for and
// replaces each sigstore bundle in it with a copy whose statement has one byte
// changed (its envelope's signature kept): the bundle's blob, its manifest,
// and the list, which forward then serves.
func (r *kyvernoRelay) tamperReferrers(req *http.Request) ([]byte, error) {
	get := func(path string) ([]byte, error) {
		u := *r.target
		u.Path, u.RawQuery = path, ""
		if path == req.URL.Path {
			u.RawQuery = req.URL.RawQuery
		}
		greq, _ := http.NewRequest(http.MethodGet, u.String(), nil)
		greq.Header.Set("Accept", ocispec.MediaTypeImageIndex+", "+ocispec.MediaTypeImageManifest)
		resp, err := http.DefaultClient.Do(greq)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	repo := strings.TrimPrefix(req.URL.Path[:strings.Index(req.URL.Path, "/referrers/")], "/v2/")
	b, err := get(req.URL.Path)
	if err != nil {
		return nil, err
	}
	var list ocispec.Index
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	for i, d := range list.Manifests {
		if d.ArtifactType != "application/vnd.dev.sigstore.bundle.v0.3+json" {
			continue
		}
		mb, err := get("/v2/" + repo + "/manifests/" + d.Digest.String())
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(mb, &m); err != nil || len(m.Layers) != 1 {
			return nil, fmt.Errorf("bundle manifest %s: %v, %d layers", d.Digest, err, len(m.Layers))
		}
		blob, err := get("/v2/" + repo + "/blobs/" + m.Layers[0].Digest.String())
		if err != nil {
			return nil, err
		}
		var bundle map[string]any
		if err := json.Unmarshal(blob, &bundle); err != nil {
			return nil, err
		}
		env, _ := bundle["dsseEnvelope"].(map[string]any)
		payload, _ := env["payload"].(string)
		statement, _ := base64.StdEncoding.DecodeString(payload)
		// A byte of the predicate the policy does not read, so that only
		// the signature can refuse it.
		changed := bytes.Replace(statement, []byte(`"rules":"config-`), []byte(`"rules":"donfig-`), 1)
		if bytes.Equal(changed, statement) {
			return nil, fmt.Errorf("bundle %s: no rules to change in %s", m.Layers[0].Digest, statement)
		}
		env["payload"] = base64.StdEncoding.EncodeToString(changed)
		blob, _ = json.Marshal(bundle)
		m.Layers[0].Digest, m.Layers[0].Size = digest.FromBytes(blob), int64(len(blob))
		mb, _ = json.Marshal(m)
		r.changed[m.Layers[0].Digest.String()] = blob
		r.changedType[m.Layers[0].Digest.String()] = "application/octet-stream"
		r.changed[digest.FromBytes(mb).String()] = mb
		r.changedType[digest.FromBytes(mb).String()] = ocispec.MediaTypeImageManifest
		list.Manifests[i].Digest, list.Manifests[i].Size = digest.FromBytes(mb), int64(len(mb))
	}
	return json.Marshal(list)
}

// changedRead says whether Kyverno read a changed bundle.
func (r *kyvernoRelay) changedRead() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.servedChanged
}

func (r *kyvernoRelay) forwarded() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *kyvernoRelay) otherHosts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.others) == 0 {
		return nil
	}
	out := map[string]int{}
	for k, v := range r.others {
		out[k] = v
	}
	return out
}

func (r *kyvernoRelay) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}
