package proxy

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// ClientAuth makes clients of the proxy authenticate, with htpasswd users
// (Basic) or static bearer tokens. /healthz and /readyz stay open; the
// registry API and warm are always protected; /metrics and the report
// (/api/v1/rewrites, /status) are protected as set.
type ClientAuth struct {
	// Users maps a user name to its bcrypt hash, as in an htpasswd file.
	Users map[string][]byte
	// Tokens are the SHA-256 hashes of the accepted bearer tokens, each
	// at least MinTokenLength bytes.
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
// Every other Basic attempt costs one bcrypt comparison, for a user that
// exists or not (so that timing tells no user name), and is counted
// against its address's allowance of failures before it runs.
type clientAuth struct {
	ClientAuth
	limit *attemptLimiter
	// compare is bcrypt.CompareHashAndPassword; tests count its calls.
	compare func(hash, password []byte) error
	// dummy is a hash of no one's password, of the users' highest cost:
	// what an unknown user's password is compared with.
	dummy []byte
	// verifying makes concurrent attempts with the same credentials (a
	// client's first parallel requests) one comparison.
	verifying singleflight.Group

	mu       sync.Mutex
	verified map[[sha256.Size]byte]bool
}

// maxVerified bounds the memory of verified pairs; beyond it, it starts over.
const maxVerified = 4096

func newClientAuth(c *ClientAuth, limit *attemptLimiter) *clientAuth {
	if c == nil {
		return nil
	}
	a := &clientAuth{ClientAuth: *c, limit: limit, compare: bcrypt.CompareHashAndPassword, verified: map[[sha256.Size]byte]bool{}}
	if len(a.Users) > 0 {
		cost := bcrypt.MinCost
		for _, h := range a.Users {
			if c, err := bcrypt.Cost(h); err == nil {
				cost = max(cost, c)
			}
		}
		secret := make([]byte, 32)
		rand.Read(secret)
		// An error is a cost out of bcrypt's range, which no hash has.
		a.dummy, _ = bcrypt.GenerateFromPassword(secret, cost)
	}
	return a
}

// clientChallenge is sent with every 401. It is always Basic: a token is also
// accepted as the password of Basic credentials (any user name), which is
// what generic clients (crane, skopeo, regctl) can send, whereas a Bearer
// challenge without a token service is one they cannot answer. containerd
// sends a token as a Bearer header from hosts.toml.
const clientChallenge = `Basic realm="regnorm"`

// check returns nil when r carries valid credentials, and otherwise the 401
// the client gets, which never says which part was wrong, or the 429 of an
// address past its allowance of failures.
//
// What costs no bcrypt comparison (a token, a remembered pair) is checked
// before the allowance and always gets in when right: behind a NAT, a load
// balancer or a NodePort that hides client addresses, one client with a
// stale token must not lock out every node that shares its address. Every
// failure still spends the address's allowance, a wrong token too, and
// only what would cost a comparison is turned away once it is spent.
// Tokens are at least MinTokenLength bytes: guessing one is no use, with
// or without a limit.
func (a *clientAuth) check(r *http.Request) error {
	addr := attemptKey(r)
	var err error
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if tokenIn(a.Tokens, strings.TrimSpace(tok)) {
			return nil
		}
		err = a.limit.fail(addr)
	} else if user, pass, ok := r.BasicAuth(); ok {
		if tokenIn(a.Tokens, pass) {
			return nil
		}
		if err = a.userOK(addr, user, pass); err == nil {
			return nil
		}
	}
	if errcode.StatusOf(err) == http.StatusTooManyRequests {
		return err
	}
	e := errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "authentication required", nil)
	e.Challenge = clientChallenge
	return e
}

// MinTokenLength is the shortest client or node report token regnorm
// takes (cmd/proxy refuses a token file with a shorter one). A right token
// gets in whatever its address's failures (see check), so what keeps
// tokens from being guessed is their length: 16 random bytes are past any
// guessing, limited or not.
const MinTokenLength = 16

// tokenIn compares tok with every one of tokens in constant time.
func tokenIn(tokens [][sha256.Size]byte, tok string) bool {
	if len(tokens) == 0 || tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	found := 0
	for _, t := range tokens {
		found |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return found == 1
}

// errWrongPassword is a Basic attempt that failed.
var errWrongPassword = errors.New("wrong user or password")

// userOK checks a user's password: nil when right, errWrongPassword, or
// the 429 of an address with no attempt left. A remembered pair is checked
// before the address's allowance: it costs no comparison.
func (a *clientAuth) userOK(addr, user, pass string) error {
	if len(a.Users) == 0 {
		// No user to find, nor a comparison to make: a wrong token.
		if err := a.limit.fail(addr); err != nil {
			return err
		}
		return errWrongPassword
	}
	hash, known := a.Users[user]
	// The user's length first: "ab"+"c" and "a"+"bc" are different pairs.
	key := sha256.Sum256(fmt.Appendf(nil, "%d:%s\x00%s", len(user), user, pass))
	if known {
		a.mu.Lock()
		ok := a.verified[key]
		a.mu.Unlock()
		if ok {
			return nil
		}
	} else {
		hash = a.dummy
	}
	err, _, _ := a.verifying.Do(string(key[:]), func() (any, error) {
		if wait := a.limit.take(addr); wait > 0 {
			return tooManyFailures(wait), nil
		}
		if a.compare(hash, []byte(pass)) != nil || !known {
			return errWrongPassword, nil
		}
		a.limit.giveBack(addr)
		a.mu.Lock()
		if len(a.verified) >= maxVerified {
			clear(a.verified)
		}
		a.verified[key] = true
		a.mu.Unlock()
		return nil, nil
	})
	if err == nil {
		return nil
	}
	return err.(error)
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
