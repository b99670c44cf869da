//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// regnormCLI runs the built binary and returns its stdout, stderr and exit
// code.
func regnormCLI(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, regnormBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("regnorm %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// TestCommandLine: help, version and the node-config and warm commands'
// help, as an operator meets them.
func TestCommandLine(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"regnorm warm", "regnorm node-config", "--check-config", "--version", "filesystem, s3 or inmemory", "-config"}},
		{[]string{"-h"}, []string{"regnorm warm"}},
		{[]string{"help"}, []string{"regnorm warm"}},
		{[]string{"--version"}, []string{"regnorm ", "revision "}},
		{[]string{"node-config", "--help"}, []string{"REGISTRY=SERVER", "--mirror", "-config"}},
		{[]string{"warm", "--help"}, []string{"IMAGE...", "-token-file", "-ca-file", "-password-file", "normalized ORIGINAL -> NORMALIZED"}},
	} {
		stdout, stderr, code := regnormCLI(t, nil, tt.args...)
		if code != 0 {
			t.Errorf("regnorm %v exits %d: %s", tt.args, code, stderr)
		}
		for _, w := range tt.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("regnorm %v does not print %q:\n%s", tt.args, w, stdout)
			}
		}
	}
	if _, stderr, code := regnormCLI(t, nil, "--no-such-flag"); code != 1 || !strings.Contains(stderr, "regnorm --help") {
		t.Errorf("an unknown flag: exit %d, %s", code, stderr)
	}
}

// TestCheckConfigLoadsEverything: --check-config says valid only for a
// configuration that will start: every file it refers to is loaded, and a
// mistake is named by its field path with the fix.
func TestCheckConfigLoadsEverything(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := writeCert(t, dir)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	base := fmt.Sprintf("cache:\n  filesystem:\n    rootDirectory: %s\n", filepath.Join(dir, "cache"))
	for _, tt := range []struct {
		name, yaml string
		wantCode   int
		want       string
	}{
		{"all there", fmt.Sprintf("tls:\n  certFile: %s\n  keyFile: %s\nupstreams:\n- name: r.example.com\n  url: https://r.example.com\n  username: u\n  passwordFile: %s\n", cert, key, pw), 0, "configuration is valid"},
		{"missing certificate", fmt.Sprintf("tls:\n  certFile: %s\n  keyFile: %s\n", filepath.Join(dir, "nope.pem"), key), 1, "config: tls.certFile, tls.keyFile:"},
		{"missing password file", "upstreams:\n- name: r.example.com\n  url: https://r.example.com\n  username: u\n  passwordFile: /nonexistent/pw\n", 1, "config: upstreams[0].passwordFile:"},
		{"missing htpasswd", "auth:\n  htpasswdFile: /nonexistent/htpasswd\n", 1, "/nonexistent/htpasswd"},
		{"s3 key variable unset", "cache:\n  driver: s3\n  s3:\n    bucket: b\n    region: r\n    accessKeyEnv: REGNORM_TEST_UNSET_A\n    secretKeyEnv: REGNORM_TEST_UNSET_B\n", 1, "config: cache.s3.accessKeyEnv: environment variable REGNORM_TEST_UNSET_A is empty"},
		{"typo", "tagTtl: 5m\n", 1, "did you mean tagTTL?"},
		{"duration in words", "tagTTL: 10 minutes\n", 1, `tagTTL (line 1): "10 minutes" is not a duration such as 90s, 10m or 1h30m`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "regnorm.yaml")
			yaml := tt.yaml
			if !strings.Contains(yaml, "cache:") {
				yaml += base
			}
			os.WriteFile(path, []byte(yaml), 0o600)
			stdout, stderr, code := regnormCLI(t, nil, "--check-config", "--config", path)
			if code != tt.wantCode || !strings.Contains(stdout+stderr, tt.want) {
				t.Fatalf("exit %d, want %d; output does not say %q:\n%s%s", code, tt.wantCode, tt.want, stdout, stderr)
			}
		})
	}
}

// TestWarmASecuredRegnorm: warm reaches a regnorm behind TLS and client
// authentication with a CA file and a token or password from a file or the
// environment, says what changed, resolves a bare name against the default
// upstream, and never shows an upstream's address.
func TestWarmASecuredRegnorm(t *testing.T) {
	registryURL, _ := startRegistry(t)
	pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	pushHello(t, registryURL, "library/clean", "v1", regtest.ImageOptions{})
	dir := t.TempDir()
	cert, key, ca := writeCert(t, dir)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("robot-token-0123456789\n"), 0o600)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("robot-token-0123456789\n"), 0o600)
	closed := freeAddr(t) // nothing listens there
	addr := freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
logFormat: json
defaultUpstream: registry.test
tls:
  certFile: %s
  keyFile: %s
auth:
  tokensFile: %s
cache:
  filesystem:
    rootDirectory: %s
upstreams:
- name: registry.test
  url: %s
- name: broken.test
  url: http://%s
`, addr, cert, key, tokens, filepath.Join(dir, "cache"), registryURL, closed)
	path := filepath.Join(dir, "regnorm.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)
	start(t, "regnorm", regnormBin, "--config", path)
	server := "https://" + addr
	waitTLS(t, addr)

	stdout, stderr, code := regnormCLI(t, nil, "warm", "--server", server, "--ca-file", ca, "--token-file", tokenFile,
		"library/legacy:v1", "registry.test/library/clean:v1", "broken.test/x/y:1")
	if code != 1 {
		t.Fatalf("one image cannot be warmed: exit %d, want 1\n%s%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a line an image:\n%s", stdout)
	}
	if !strings.HasPrefix(lines[0], "library/legacy:v1\tnormalized sha256:") || !strings.HasSuffix(lines[0], "(config-media-type)") {
		t.Errorf("a bare name on the default upstream, normalized: %q", lines[0])
	}
	if !strings.HasPrefix(lines[1], "registry.test/library/clean:v1\tclean sha256:") {
		t.Errorf("a clean image: %q", lines[1])
	}
	if lines[2] != "broken.test/x/y:1\terror: UNAVAILABLE: upstream broken.test unreachable" || strings.Contains(stdout+stderr, closed) {
		t.Errorf("an unreachable upstream: %q (must not name %s)", lines[2], closed)
	}
	if !strings.Contains(stderr, "1 of 3 images failed") {
		t.Errorf("stderr: %s", stderr)
	}

	// The token as a Basic password, from the environment.
	if stdout, stderr, code := regnormCLI(t, []string{"REGNORM_SERVER=" + server, "REGNORM_CA_FILE=" + ca, "REGNORM_PASSWORD=robot-token-0123456789"},
		"warm", "--username", "ops", "library/legacy:v1"); code != 0 || !strings.Contains(stdout, "normalized") {
		t.Errorf("with Basic credentials from the environment: exit %d\n%s%s", code, stdout, stderr)
	}
	// Without the CA, or without credentials: a clear refusal.
	if _, stderr, code := regnormCLI(t, nil, "warm", "--server", server, "--token-file", tokenFile, "library/legacy:v1"); code != 1 || !strings.Contains(stderr, "certificate") {
		t.Errorf("without the CA: exit %d, %s", code, stderr)
	}
	if _, stderr, code := regnormCLI(t, nil, "warm", "--server", server, "--ca-file", ca, "library/legacy:v1"); code != 1 || !strings.Contains(stderr, "401 Unauthorized: UNAUTHORIZED") {
		t.Errorf("without credentials: exit %d, %s", code, stderr)
	}
	// Replicas must run one build: the metric says which.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfigFor(t, ca)}}
	req, _ := http.NewRequest(http.MethodGet, server+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer robot-token-0123456789")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), "regnorm_build_info{goversion=") {
		t.Errorf("no regnorm_build_info in /metrics")
	}
}

// waitTLS waits until something accepts TLS connections at addr.
func waitTLS(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only waiting for the listener
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing serves TLS at %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tlsConfigFor(t *testing.T, caFile string) *tls.Config {
	t.Helper()
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &tls.Config{RootCAs: pool}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key, and
// returns their paths and the CA file to trust (the certificate itself).
func writeCert(t *testing.T, dir string) (cert, key, ca string) {
	t.Helper()
	certPEM, keyPEM := regtest.SelfSigned(t, "regnorm test", "127.0.0.1")
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, certPEM, 0o600)
	os.WriteFile(key, keyPEM, 0o600)
	return cert, key, cert
}
