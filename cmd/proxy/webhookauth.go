package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
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
	names []string
	cas   *reloaded[*x509.CertPool]
}

// newWebhookCallers loads c's CA; nil when c asks no client certificate.
func newWebhookCallers(c WebhookConfig, now func() time.Time, log *slog.Logger) (*webhookCallers, error) {
	if c.ClientCAFile == "" {
		return nil, nil
	}
	cas, err := newReloaded("webhook client CA", func() (*x509.CertPool, error) { return clientCAPool(c.ClientCAFile) }, now, log, c.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("config: webhook.clientCAFile: %w", err)
	}
	return &webhookCallers{names: c.ClientNames, cas: cas}, nil
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
		c.ClientCAs = w.cas.get()
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
