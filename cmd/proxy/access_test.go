package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
)

// writeCert writes a self-signed certificate for 127.0.0.1 named cn.
func writeCert(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	cert, key := regtest.SelfSigned(t, cn, "127.0.0.1")
	os.WriteFile(keyFile, key, 0o600)
	os.WriteFile(certFile, cert, 0o600)
}

// TestTLSAndClientAuth: the mirror serves HTTPS, picks up a renewed
// certificate without a restart, and asks clients for a token except on
// the health checks.
func TestTLSAndClientAuth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, "first")
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("# robots\nrobot-token-0123456789\n"), 0o600)
	addr := freeAddrs(t, 1)[0]
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte("tls:\n  certFile: "+certFile+"\n  keyFile: "+keyFile+"\nauth:\n  tokensFile: "+tokens+"\n"), 0o600)
	runUntilDone(t, []string{"--config", config, "--listen", addr}, env(nil))

	servedName := func() string {
		t.Helper()
		var conn *tls.Conn
		var err error
		for range 100 {
			if conn, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := servedName(); got != "first" {
		t.Fatalf("serving %q, want first", got)
	}
	writeCert(t, certFile, keyFile, "second")
	deadline := time.Now().Add(5 * time.Second)
	for servedName() != "second" {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not picked up")
		}
		time.Sleep(200 * time.Millisecond)
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/v2/", "", http.StatusUnauthorized},
		{"/v2/", "robot-token-0123456789", http.StatusOK},
		{"/healthz", "", http.StatusOK},
		{"/metrics", "", http.StatusOK},
	} {
		req, _ := http.NewRequest("GET", "https://"+addr+tt.path, nil)
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s with token %q: %d, want %d", tt.path, tt.token, resp.StatusCode, tt.want)
		}
	}
}

// TestShortTokensAreRefused: a client or node report token shorter than
// proxy.MinTokenLength is a configuration error that names the field, the
// file and the line, never the token: a right token gets in whatever its
// address's failures, so only its length keeps it from being guessed.
func TestShortTokensAreRefused(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", proxy.MinTokenLength)
	for _, tt := range []struct {
		name, field string
	}{
		{"client tokens", "auth.tokensFile"},
		{"node report tokens", "nodes.reportTokenFile"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			tokens := filepath.Join(dir, "tokens")
			config := filepath.Join(dir, "regnorm.yaml")
			section, key, _ := strings.Cut(tt.field, ".")
			os.WriteFile(config, []byte(section+":\n  "+key+": "+tokens+"\n"), 0o600)
			check := func(content string) error {
				os.WriteFile(tokens, []byte(content), 0o600)
				return run(context.Background(), []string{"--check-config", "--config", config, "--data-dir", dir}, env(nil), io.Discard, io.Discard)
			}
			if err := check("# long enough\n" + long + "\n"); err != nil {
				t.Fatalf("a token of %d bytes: %v", len(long), err)
			}
			err := check(long + "\nshort-secret-1\n")
			if err == nil {
				t.Fatal("a token of 14 bytes was accepted")
			}
			if msg := err.Error(); !strings.Contains(msg, "config: "+tt.field+": "+tokens+" line 2 is a token of 14 bytes, shorter than 16") || strings.Contains(msg, "short-secret-1") {
				t.Errorf("the error does not name the field, file and line, or shows the token: %v", err)
			}
		})
	}
}

// TestAttestationKey: attestations.keyFile loads an unencrypted PKCS #8
// ed25519 or ECDSA P-256 key into a signer whose public key is the key's;
// a missing file, a file that is no key, and a key of another kind are
// errors that name the field; no key is no signer (unsigned attestations).
func TestAttestationKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, key any) string {
		t.Helper()
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		return p
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, tt := range map[string]struct {
		path string
		pub  crypto.PublicKey
	}{"ed25519": {write("ed.pem", ed), ed.Public()}, "ecdsa": {write("ec.pem", ec), ec.Public()}} {
		s, err := loadAttestationSigner(AttestationsConfig{KeyFile: tt.path})
		if err != nil || s == nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !s.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.pub) {
			t.Errorf("%s: the signer's public key is not the file's", name)
		}
	}
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a key\n"), 0o600)
	for name, path := range map[string]string{"missing": filepath.Join(dir, "none.pem"), "garbage": garbage, "p384": write("p384.pem", p384)} {
		if _, err := loadAttestationSigner(AttestationsConfig{KeyFile: path}); err == nil || !strings.Contains(err.Error(), "attestations.keyFile") {
			t.Errorf("%s: %v, want an error naming attestations.keyFile", name, err)
		}
	}
	if s, err := loadAttestationSigner(AttestationsConfig{}); s != nil || err != nil {
		t.Errorf("no key: %v, %v", s, err)
	}
}
