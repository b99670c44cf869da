package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// webhookCallers is who may call the admission webhook (webhook.clientCAFile,
// webhook.clientNames): the holders of a client certificate that the CA in
// caFile signed for client authentication and, with names, that names one
// of them as its common name or a DNS name. The API server presents such a
// certificate when its AdmissionConfiguration's kubeconfig names one for
// the webhook's Service (docs/webhook.md). caFile is read again when it
// changes (checked at most once a second, on a handshake); a CA that does
// not load keeps the previous one.
type webhookCallers struct {
	caFile string
	names  []string
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	pool    *x509.CertPool
	stamp   string
	checked time.Time
}

// newWebhookCallers loads c's CA; nil when c asks no client certificate.
func newWebhookCallers(c WebhookConfig, now func() time.Time, log *slog.Logger) (*webhookCallers, error) {
	if c.ClientCAFile == "" {
		return nil, nil
	}
	w := &webhookCallers{caFile: c.ClientCAFile, names: c.ClientNames, now: now, log: log}
	stamp, err := fileStamp(c.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("config: webhook.clientCAFile: %w", err)
	}
	pool, err := clientCAPool(c.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("config: webhook.clientCAFile: %w", err)
	}
	w.pool, w.stamp, w.checked = pool, stamp, now()
	return w, nil
}

// clientCAPool is the certificates in path, and only those: the system's
// roots would let any certificate a public CA issued call the webhook.
func clientCAPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// current is the CA pool, read again when the file changed.
func (w *webhookCallers) current() *x509.CertPool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.now().Sub(w.checked) < time.Second {
		return w.pool
	}
	w.checked = w.now()
	stamp, err := fileStamp(w.caFile)
	if err != nil || stamp == w.stamp {
		return w.pool
	}
	pool, err := clientCAPool(w.caFile)
	if err != nil {
		w.log.Warn("webhook client CA did not load; verifying callers with the previous one", "error", err)
		return w.pool
	}
	w.pool, w.stamp = pool, stamp
	w.log.Info("webhook client CA reloaded", "file", w.caFile)
	return w.pool
}

// require makes base ask every caller for a client certificate and verify
// it (chain to the CA, client authentication usage, validity), and, with
// names, the name it holds: a handshake without one fails, before any
// request is read.
func (w *webhookCallers) require(base *tls.Config) *tls.Config {
	base = base.Clone()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = w.current()
		c.VerifyConnection = w.verifyName
		return c, nil
	}
	return base
}

// errCallerName refuses a verified certificate that names no allowed caller.
var errCallerName = errors.New("the client certificate names none of webhook.clientNames")

func (w *webhookCallers) verifyName(cs tls.ConnectionState) error {
	if len(w.names) == 0 {
		return nil
	}
	if len(cs.PeerCertificates) == 0 {
		return errCallerName
	}
	cert := cs.PeerCertificates[0]
	if slices.Contains(w.names, cert.Subject.CommonName) {
		return nil
	}
	for _, n := range cert.DNSNames {
		if slices.Contains(w.names, n) {
			return nil
		}
	}
	return fmt.Errorf("%w: common name %q, DNS names %q", errCallerName, cert.Subject.CommonName, cert.DNSNames)
}
