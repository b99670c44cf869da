package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/replicas"
)

// loadClientAuth reads the htpasswd and token files; nil when auth is off.
func loadClientAuth(c AuthConfig) (*proxy.ClientAuth, error) {
	if !c.enabled() {
		return nil, nil
	}
	a := &proxy.ClientAuth{Users: map[string][]byte{}, ProtectMetrics: c.ProtectMetrics, ProtectReport: c.ProtectReport}
	if c.HtpasswdFile != "" {
		err := eachLine(c.HtpasswdFile, func(n int, line string) error {
			user, hash, ok := strings.Cut(line, ":")
			if !ok || user == "" || !strings.HasPrefix(hash, "$2") {
				return fmt.Errorf("%s line %d is not user:bcrypt-hash (htpasswd -B)", c.HtpasswdFile, n)
			}
			a.Users[user] = []byte(hash)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("config: auth.htpasswdFile: %w", err)
		}
	}
	if c.TokensFile != "" {
		var err error
		if a.Tokens, err = loadTokens(c.TokensFile, "auth.tokensFile"); err != nil {
			return nil, err
		}
	}
	if len(a.Users) == 0 && len(a.Tokens) == 0 {
		return nil, fmt.Errorf("config: auth: %s%s holds no user or token: nobody could pull", c.HtpasswdFile, c.TokensFile)
	}
	return a, nil
}

// loadReportTokens reads nodes.reportTokenFile: the SHA-256 of each token
// node-config's reports may carry. No file is no token: reports are
// refused.
func loadReportTokens(c NodesConfig) ([][sha256.Size]byte, error) {
	if c.ReportTokenFile == "" {
		return nil, nil
	}
	tokens, err := loadTokens(c.ReportTokenFile, "nodes.reportTokenFile")
	if err != nil {
		return nil, err
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("config: nodes.reportTokenFile: %s holds no token: every node report would be refused", c.ReportTokenFile)
	}
	return tokens, nil
}

// loadTokens reads a token file, one token a line, into the SHA-256 of
// each. A right token gets in however many failures its address made, so
// a token shorter than proxy.MinTokenLength, which could be guessed, is a
// configuration error (naming the line, never the token).
func loadTokens(path, field string) ([][sha256.Size]byte, error) {
	var tokens [][sha256.Size]byte
	err := eachLine(path, func(n int, line string) error {
		if len(line) < proxy.MinTokenLength {
			return fmt.Errorf("%s line %d is a token of %d bytes, shorter than %d: make tokens random and long (openssl rand -hex 24)", path, n, len(line), proxy.MinTokenLength)
		}
		tokens = append(tokens, sha256.Sum256([]byte(line)))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", field, err)
	}
	return tokens, nil
}

// eachLine calls fn with every non-empty line of path that is not a comment.
func eachLine(path string, fn func(n int, line string) error) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(n, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// certReloader serves the certificate in certFile and keyFile, reading them
// again when either changes (checked at most once per second, on a
// handshake). A pair that does not load keeps the previous one in service.
type certReloader struct {
	certFile, keyFile string
	now               func() time.Time
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' size and modification times
	checked time.Time
}

// newCertReloader loads the pair; now is the clock the checks go by.
func newCertReloader(certFile, keyFile string, now func() time.Time, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, now: now, log: log}
	stamp, err := c.fileStamp()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c.cert, c.stamp, c.checked = &cert, stamp, now()
	return c, nil
}

func (c *certReloader) fileStamp() (string, error) { return fileStamp(c.certFile, c.keyFile) }

// fileStamp is the files' sizes and modification times: what tells a
// reloader that a file changed.
func fileStamp(paths ...string) (string, error) {
	var parts []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprint(fi.Size(), fi.ModTime().UnixNano()))
	}
	return strings.Join(parts, "/"), nil
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now().Sub(c.checked) < time.Second {
		return c.cert, nil
	}
	c.checked = c.now()
	stamp, err := c.fileStamp()
	if err != nil || stamp == c.stamp {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Often the moment between writing the certificate and the key.
		c.log.Warn("TLS certificate did not load; serving the previous one", "error", err)
		return c.cert, nil
	}
	c.cert, c.stamp = &cert, stamp
	c.log.Info("TLS certificate reloaded", "file", c.certFile)
	return c.cert, nil
}

// loadReplicaSecret reads the secret the replicas share; nil when there
// are none.
func loadReplicaSecret(c ReplicasConfig) ([]byte, error) {
	if !c.enabled() {
		return nil, nil
	}
	secret, err := readSecret(c.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("config: replicas.secretFile: %w", err)
	}
	if len(secret) < replicas.MinSecretLength {
		return nil, fmt.Errorf("config: replicas.secretFile: the secret is %d bytes, at least %d are needed", len(secret), replicas.MinSecretLength)
	}
	return []byte(secret), nil
}

// loadAttestationSigner reads the key that signs the variants'
// attestations; nil (unsigned attestations) when none is configured.
func loadAttestationSigner(c AttestationsConfig) (*attest.Signer, error) {
	if c.KeyFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("config: attestations.keyFile: %w", err)
	}
	key, err := attest.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("config: attestations.keyFile %s: %w", c.KeyFile, err)
	}
	s, err := attest.NewSigner(key)
	if err != nil {
		return nil, fmt.Errorf("config: attestations.keyFile %s: %w", c.KeyFile, err)
	}
	return s, nil
}

// readSecret reads a password or token from a file, without its trailing
// newline.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return secret, nil
}

// certPool is the system roots plus the certificates in the PEM file.
func certPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
