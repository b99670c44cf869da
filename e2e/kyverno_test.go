//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
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
// policy's mirror name to regnorm; nothing else is reached). A Pod naming the
// vendor-signed original passes, and so does one naming regnorm's variant of
// it (regnorm's attestation, then the vendor's signature on the original the
// attestation names), by the upstream's name or the mirror's. Refused: the
// variant attested by a regnorm with another key; regnorm's variant of an
// original signed with another key; an original signed with another key; an
// unsigned image.
func TestKyvernoPolicyAcceptsOriginalAndVariant(t *testing.T) {
	if _, err := os.Stat(kyvernoBin); err != nil {
		t.Fatalf("REGNORM_KYVERNO_BIN=%q is not usable (%v); run scripts/test.sh, which installs it", kyvernoBin, err)
	}
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
	// Signed in the upstream, in cosign's classic format (what the docs
	// tell a vendor-signed image to be; the policy reads it through regnorm).
	sign := func(key, repo string, img regtest.Image) {
		t.Helper()
		cosign("sign", "--key", key, "--use-signing-config=false", "--tlog-upload=false", "-y", "--allow-http-registry",
			"--new-bundle-format=false", registryHost+"/"+repo+"@"+img.ManifestDigest.String())
	}
	sign("vendor.key", "library/signed", signed)
	sign("other-vendor.key", "library/othersigned", otherSigned)
	// Another image of library/signed that the vendor did not sign,
	// attested with regnorm's key by cosign itself, in cosign v3's bundle
	// format, with a predicate of regnorm's type naming the vendor-signed
	// original: what the policy's second branch accepts, whoever wrote it.
	bundled := pushHelloWith(t, registryURL, "library/signed", "bundled", regtest.ImageOptions{},
		[]regtest.File{{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "etc/motd", Content: []byte("bundled\n")}})
	cosign("import-key-pair", "--key", "regnorm.key", "--output-key-prefix", "regnorm-cosign")
	predicate := `{"original":{"digest":"` + signed.ManifestDigest.String() + `"},"upstream":"docker.io","repository":"library/signed"}`
	os.WriteFile(filepath.Join(dir, "predicate.json"), []byte(predicate), 0o600)
	cosign("attest", "--key", "regnorm-cosign.key", "--type", derivationType, "--predicate", "predicate.json",
		"--use-signing-config=false", "--tlog-upload=false", "-y", "--allow-http-registry",
		registryHost+"/library/signed@"+bundled.ManifestDigest.String())

	regnormURL, _ := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "regnorm.key")+"\n")
	otherURL, _ := startRegnorm(t, registryURL, "attestations:\n  keyFile: "+filepath.Join(dir, "other-regnorm.key")+"\n")
	// The variants containerd 1.6.8 gets, by tag: each is attested there.
	variant := pullVariant(t, regnormURL, "library/signed", signed)
	otherVariant := pullVariant(t, regnormURL, "library/othersigned", otherSigned)
	if got := pullVariant(t, otherURL, "library/signed", signed); got != variant {
		t.Fatalf("the other regnorm made %s of library/signed, this one %s", got, variant)
	}

	relay := startKyvernoRelay(t, dir)

	for _, tt := range []struct {
		name   string
		mirror string // the regnorm the policy's mirror name reaches
		image  string
		pass   bool
	}{
		{"original", regnormURL, "docker.io/library/signed@" + signed.ManifestDigest.String(), true},
		{"variant", regnormURL, "docker.io/library/signed@" + variant.String(), true},
		{"variant by the mirror's name", regnormURL, mirrorName + "/library/signed@" + variant.String(), true},
		{"image attested in cosign's bundle format", regnormURL, "docker.io/library/signed@" + bundled.ManifestDigest.String(), true},
		{"variant attested with another key", otherURL, "docker.io/library/signed@" + variant.String(), false},
		{"variant of an original signed with another key", regnormURL, "docker.io/library/othersigned@" + otherVariant.String(), false},
		{"original signed with another key", regnormURL, "docker.io/library/othersigned@" + otherSigned.ManifestDigest.String(), false},
		{"unsigned", regnormURL, "docker.io/library/unsigned@" + unsigned.ManifestDigest.String(), false},
	} {
		relay.reset(tt.mirror)
		pod := filepath.Join(dir, "pod.yaml")
		os.WriteFile(pod, []byte(podYAML(tt.image)), 0o600)
		// Bounded: Kyverno 1.19.1 can deadlock (see docs/signatures.md).
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, kyvernoBin, "apply", "policy.yaml", "--resource", "pod.yaml", "--remove-color")
		cmd.Dir = dir
		// Kyverno's registry client takes its proxy from the environment;
		// loopback would bypass it, the mirror's name does not.
		cmd.Env = append(os.Environ(), "HOME="+dir, "SSL_CERT_FILE="+relay.ca, "HTTP_PROXY="+relay.url,
			"HTTPS_PROXY="+relay.url, "NO_PROXY=", "http_proxy=", "https_proxy=", "no_proxy=")
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
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
		if exit != wantExit || !strings.Contains(string(out), want) {
			// Again, for the report: its messages say why.
			report := exec.CommandContext(ctx, kyvernoBin, "apply", "policy.yaml", "--resource", "pod.yaml", "--remove-color", "--policy-report")
			report.Dir, report.Env = dir, cmd.Env
			reported, _ := report.CombinedOutput()
			t.Errorf("%s (%s): kubectl-kyverno apply exited %d, want %d and %q:\n%s\nrelay: %s\npolicy report:\n%s",
				tt.name, tt.image, exit, wantExit, want, out, relay.summary(), reported)
			cancel()
			continue
		}
		cancel()
		if hosts := relay.otherHosts(); len(hosts) > 0 {
			t.Errorf("%s: Kyverno asked %v, not only the mirror", tt.name, hosts)
		}
		if relay.forwarded() == 0 {
			t.Errorf("%s: Kyverno read nothing through regnorm", tt.name)
		}
		t.Logf("%s: exit %d in %v, %d requests to regnorm; %s", tt.name, exit, took.Round(10*time.Millisecond), relay.forwarded(), lastLines(string(out), 1))
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

// podYAML is a Pod with one container running image.
func podYAML(image string) string {
	return `apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: default
spec:
  containers:
  - name: app
    image: ` + image + "\n"
}

// kyvernoRelay is the HTTP proxy of the test's Kyverno: a CONNECT to the
// policy's mirror name (port 443) is tunnelled to a TLS server with a
// certificate for that name (Kyverno trusts it through SSL_CERT_FILE), which
// forwards to the regnorm the relay is set to; anything else (another host,
// plain HTTP) is refused and recorded.
type kyvernoRelay struct {
	url string // the proxy's URL
	ca  string // the file of the certificate to trust

	mu     sync.Mutex
	target *url.URL
	n      int
	others map[string]int
	log    bytes.Buffer
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

// reset points the mirror name at target and forgets what was asked.
func (r *kyvernoRelay) reset(target string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target, _ = url.Parse(target)
	r.n, r.others = 0, map[string]int{}
	r.log.Reset()
}

// forward serves the mirror name: a reverse proxy to the target regnorm.
func (r *kyvernoRelay) forward(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	target := r.target
	r.n++
	r.log.WriteString(req.Method + " " + req.URL.RequestURI() + "\n")
	r.mu.Unlock()
	httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, req)
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
