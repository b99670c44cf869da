package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// ClientAuth makes clients of the proxy authenticate, with htpasswd users
// (Basic) or static bearer tokens. /healthz and /readyz stay open; the
// registry API and warm are always protected; /metrics and the report
// (/api/v1/rewrites, /status) are protected as set.
type ClientAuth struct {
	// Users maps a user name to its bcrypt hash, as in an htpasswd file.
	Users map[string][]byte
	// Tokens are the SHA-256 hashes of the accepted bearer tokens.
	Tokens [][sha256.Size]byte
	// ProtectMetrics puts /metrics behind authentication too.
	ProtectMetrics bool
	// ProtectReport puts the rewrite report and the status page behind
	// authentication too.
	ProtectReport bool
}

// clientAuth checks client credentials. bcrypt costs tens of milliseconds
// by design, and containerd sends its credentials with every request, so a
// verified user:password pair is remembered (as a hash, never in clear).
type clientAuth struct {
	ClientAuth

	mu       sync.Mutex
	verified map[[sha256.Size]byte]bool
}

// maxVerified bounds the memory of verified pairs; beyond it, it starts over.
const maxVerified = 4096

func newClientAuth(c *ClientAuth) *clientAuth {
	if c == nil {
		return nil
	}
	return &clientAuth{ClientAuth: *c, verified: map[[sha256.Size]byte]bool{}}
}

// clientChallenge is sent with every 401. It is always Basic: a token is also
// accepted as the password of Basic credentials (any user name), which is
// what generic clients (crane, skopeo, regctl) can send, whereas a Bearer
// challenge without a token service is one they cannot answer. containerd
// sends a token as a Bearer header from hosts.toml.
const clientChallenge = `Basic realm="regnorm"`

// check returns nil when r carries valid credentials, and otherwise the 401
// the client gets, which never says which part was wrong.
func (a *clientAuth) check(r *http.Request) error {
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		if a.tokenOK(strings.TrimSpace(tok)) {
			return nil
		}
	} else if user, pass, ok := r.BasicAuth(); ok && (a.tokenOK(pass) || a.userOK(user, pass)) {
		return nil
	}
	e := errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "authentication required", nil)
	e.Challenge = clientChallenge
	return e
}

// tokenOK compares tok with every accepted token in constant time.
func (a *clientAuth) tokenOK(tok string) bool {
	if len(a.Tokens) == 0 || tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	found := 0
	for _, t := range a.Tokens {
		found |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return found == 1
}

func (a *clientAuth) userOK(user, pass string) bool {
	hash, ok := a.Users[user]
	if !ok {
		return false
	}
	key := sha256.Sum256([]byte(user + "\x00" + pass))
	a.mu.Lock()
	known := a.verified[key]
	a.mu.Unlock()
	if known {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return false
	}
	a.mu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified)
	}
	a.verified[key] = true
	a.mu.Unlock()
	return true
}

// protect wraps h with authentication when client auth is on and on says
// this route is protected.
func (s *Server) protect(on bool, h handlerFunc) handlerFunc {
	if s.clientAuth == nil || !on {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := s.clientAuth.check(r); err != nil {
			return err
		}
		return h(w, r)
	}
}
