package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA signs client certificates for the webhook's callers.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// client issues a certificate named cn (and dnsNames) for usage.
func (ca *testCA) client(t *testing.T, cn string, usage x509.ExtKeyUsage, dnsNames ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestWebhookAuthenticatesItsCallers: with webhook.clientCAFile the
// webhook's listener asks every caller for a client certificate, over a
// real TLS handshake: no certificate, one another CA signed, one the CA
// signed for servers only, or one naming no caller of webhook.clientNames
// is refused before a review is read; the API server's certificate (by
// its common name or a DNS name) gets its answer. Before, the webhook
// answered anyone who reached its port (proxy's
// TestWebhookGivesNothingToAnUnauthenticatedCaller shows what that gave).
func TestWebhookAuthenticatesItsCallers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, "webhook")
	ca, stranger := newTestCA(t, "apiserver-client-ca"), newTestCA(t, "someone-else")
	caFile := filepath.Join(dir, "client-ca.crt")
	os.WriteFile(caFile, ca.pem, 0o600)
	addrs := freeAddrs(t, 2)
	mirrorAddr, webhookAddr := addrs[0], addrs[1]
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte("webhook:\n  listen: "+webhookAddr+"\n  certFile: "+certFile+"\n  keyFile: "+keyFile+
		"\n  clientCAFile: "+caFile+"\n  clientNames: [kube-apiserver, apiserver.control-plane]\n  clients: [\"1.6.8\"]\n"), 0o600)
	runUntilDone(t, []string{"--config", config, "--listen", mirrorAddr}, env(nil))

	post := func(certs ...tls.Certificate) (*http.Response, error) { return postReview(webhookAddr, certs...) }
	status, body := firstReview(t, webhookAddr, ca.client(t, "kube-apiserver", x509.ExtKeyUsageClientAuth))
	var got struct{ Response struct{ UID string } }
	if status != http.StatusOK || json.Unmarshal(body, &got) != nil || got.Response.UID != "u-1" {
		t.Fatalf("the API server's certificate: %d %s", status, body)
	}
	if resp, err := post(ca.client(t, "webhook-caller", x509.ExtKeyUsageClientAuth, "apiserver.control-plane")); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a certificate whose DNS name is allowed: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	for name, certs := range map[string][]tls.Certificate{
		"no certificate":             nil,
		"another CA's":               {stranger.client(t, "kube-apiserver", x509.ExtKeyUsageClientAuth)},
		"the CA's, for servers only": {ca.client(t, "kube-apiserver", x509.ExtKeyUsageServerAuth)},
		"the CA's, another name":     {ca.client(t, "system:node:worker-1", x509.ExtKeyUsageClientAuth, "worker-1")},
	} {
		if resp, err := post(certs...); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("%s: answered %d %s, want a refused handshake", name, resp.StatusCode, body)
		}
	}
}

// TestWebhookWithoutCallerAuthenticationWarns: client authentication on
// the registry port with a webhook that answers anyone is allowed (managed
// control planes cannot present a client certificate to a webhook) but
// said, by --check-config as by a start; with webhook.clientCAFile, or
// without client auth, nothing is said. A client CA file that holds no
// certificate does not pass --check-config. Pins with no bound on their
// bytes (a cache bounded by age alone) are said too.
func TestWebhookWithoutCallerAuthenticationWarns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, "webhook")
	tokens, caFile, junk := filepath.Join(dir, "tokens"), filepath.Join(dir, "ca.crt"), filepath.Join(dir, "junk.crt")
	os.WriteFile(tokens, []byte("robot-token-0123456789\n"), 0o600)
	os.WriteFile(caFile, newTestCA(t, "ca").pem, 0o600)
	os.WriteFile(junk, []byte("not a certificate\n"), 0o600)
	webhook := "webhook:\n  listen: 127.0.0.1:8443\n  certFile: " + certFile + "\n  keyFile: " + keyFile + "\n"
	auth := "auth:\n  tokensFile: " + tokens + "\n"
	for _, tc := range []struct {
		name, yaml string
		warns      bool
		namesWarn  bool // the client CA answers any certificate it signed
		wantErr    string
		pinsWarn   bool // pins keep blobs with no bound on their bytes
	}{
		{"client auth, webhook open to anyone", auth + webhook, true, false, "", false},
		{"client auth, webhook asks a client certificate", auth + webhook + "  clientCAFile: " + caFile + "\n", false, true, "", false},
		{"client auth, webhook asks the API server's certificate", auth + webhook + "  clientCAFile: " + caFile + "\n  clientNames: [kube-apiserver]\n", false, false, "", false},
		{"no client auth", webhook, false, false, "", false},
		{"cache by age, pins unbounded", webhook + "cache:\n  maxAge: 720h\n", false, false, "", true},
		{"cache by age, pins bounded", webhook + "cache:\n  maxAge: 720h\n  maxPinnedSize: 10GiB\n", false, false, "", false},
		{"a client CA file without a certificate", webhook + "  clientCAFile: " + junk + "\n", false, false, "webhook.clientCAFile", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			config := filepath.Join(t.TempDir(), "config.yaml")
			os.WriteFile(config, []byte(tc.yaml), 0o600)
			var out bytes.Buffer
			err := run(context.Background(), []string{"--check-config", "--config", config, "--data-dir", t.TempDir()}, env(nil), &out, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(out.String(), "# warning: auth makes the registry port ask clients for credentials, but the admission webhook"); got != tc.warns {
				t.Errorf("warned %v, want %v:\n%s", got, tc.warns, out.String())
			}
			if got := strings.Contains(out.String(), "# warning: webhook.clientCAFile without webhook.clientNames"); got != tc.namesWarn {
				t.Errorf("warned of the names %v, want %v:\n%s", got, tc.namesWarn, out.String())
			}
			if got := strings.Contains(out.String(), "# warning: cache.maxAge without cache.maxSize or cache.maxPinnedSize"); got != tc.pinsWarn {
				t.Errorf("warned of the pins %v, want %v:\n%s", got, tc.pinsWarn, out.String())
			}
		})
	}
}
