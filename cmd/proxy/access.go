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

// reloaded is a value loaded from files, loaded again when they change
// (checked at most once a second, when it is asked for): a TLS pair, a CA.
// A change that does not load keeps the previous value in service (often
// the moment between writing a certificate and its key).
type reloaded[T any] struct {
	what  string // for the log
	paths []string
	load  func() (T, error)
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	value   T
	stamp   string // the files' sizes and modification times
	checked time.Time
}

// newReloaded loads what from paths; now is the clock the checks go by.
func newReloaded[T any](what string, load func() (T, error), now func() time.Time, log *slog.Logger, paths ...string) (*reloaded[T], error) {
	stamp, err := fileStamp(paths...)
	if err != nil {
		return nil, err
	}
	v, err := load()
	if err != nil {
		return nil, err
	}
	return &reloaded[T]{what: what, paths: paths, load: load, now: now, log: log, value: v, stamp: stamp, checked: now()}, nil
}

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

// get is the value, loaded again if the files changed.
func (r *reloaded[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().Sub(r.checked) < time.Second {
		return r.value
	}
	r.checked = r.now()
	stamp, err := fileStamp(r.paths...)
	if err != nil || stamp == r.stamp {
		return r.value
	}
	v, err := r.load()
	if err != nil {
		r.log.Warn(r.what+" did not load; keeping the previous one in service", "error", err)
		return r.value
	}
	r.value, r.stamp = v, stamp
	r.log.Info(r.what+" reloaded", "file", r.paths[0])
	return r.value
}

// newCertReloader serves the pair in certFile and keyFile, read again on
// renewal.
func newCertReloader(certFile, keyFile string, now func() time.Time, log *slog.Logger) (*reloaded[*tls.Certificate], error) {
	return newReloaded("TLS certificate", func() (*tls.Certificate, error) {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		return &cert, err
	}, now, log, certFile, keyFile)
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
