package main

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWebhookCertificateReload: the webhook's listener serves its pair,
// and the handshake after the files change (past the once-a-second check,
// on the test's clock) serves the new one; a pair that does not load
// leaves the one in service. TLS before 1.2 is refused.
func TestWebhookCertificateReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, "first")
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }

	ln, err := webhookListener(WebhookConfig{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}, clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ErrorLog: log.New(io.Discard, "", 0)} // refused handshakes
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	served := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("serving %q, want first", got)
	}
	writeCert(t, certFile, keyFile, "second")
	advance(2 * time.Second)
	if got := served(); got != "second" {
		t.Fatalf("after renewal: serving %q, want second", got)
	}
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	advance(2 * time.Second)
	if got := served(); got != "second" {
		t.Fatalf("after a broken renewal: serving %q, want second", got)
	}
	if conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

// TestWebhookListener: with webhook.listen, regnorm answers admission
// reviews there over HTTPS, and only there: the mirror's listener has no
// /mutate, and the webhook's no registry API.
func TestWebhookListener(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, "webhook")
	addrs := freeAddrs(t, 2)
	mirrorAddr, webhookAddr := addrs[0], addrs[1]
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte("webhook:\n  certFile: "+certFile+"\n  keyFile: "+keyFile+"\n  clients: [\"1.6.8\"]\n"), 0o600)
	runUntilDone(t, []string{"--config", config, "--listen", mirrorAddr}, env(map[string]string{"REGNORM_WEBHOOK_LISTEN": webhookAddr}))

	status, body := firstReview(t, webhookAddr)
	var got struct {
		Response struct {
			UID     string
			Allowed bool
			Patch   []byte
		}
	}
	if status != http.StatusOK || json.Unmarshal(body, &got) != nil || got.Response.UID != "u-1" || !got.Response.Allowed || got.Response.Patch != nil {
		t.Fatalf("POST /mutate: %d %s", status, body)
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, tt := range []struct{ url, method string }{
		{"https://" + webhookAddr + "/v2/", http.MethodGet},
		{"https://" + webhookAddr + "/api/v1/warm", http.MethodPost},
		{"http://" + mirrorAddr + "/mutate", http.MethodPost},
	} {
		req, _ := http.NewRequest(tt.method, tt.url, strings.NewReader(testReview))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d", tt.method, tt.url, resp.StatusCode)
		}
	}
}

// testReview is an AdmissionReview of a Pod running redis:7, uid u-1.
const testReview = `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
	`"object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"redis:7"}]}}}}`

// postReview posts testReview to the webhook at addr, as a client
// presenting certs.
func postReview(addr string, certs ...tls.Certificate) (*http.Response, error) {
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}}
	defer client.CloseIdleConnections()
	return client.Post("https://"+addr+"/mutate", "application/json", strings.NewReader(testReview))
}

// firstReview is postReview, again until the webhook listens (5 s at
// most): the answer's status and body.
func firstReview(t *testing.T, addr string, certs ...tls.Certificate) (int, []byte) {
	t.Helper()
	var resp *http.Response
	var err error
	for range 250 {
		if resp, err = postReview(addr, certs...); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}
