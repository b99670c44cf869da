package proxy

import (
	"context"
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
// exists or not (so that timing tells no user name): it is counted against
// its address's allowance and all addresses' before it runs, and waits for
// one of the few turns to compare (passwordTurns).
type clientAuth struct {
	ClientAuth
	// passwords limits comparisons, tokens wrong tokens (authlimit.go).
	passwords, tokens *attemptLimiter
	turns             *passwordTurns
	metrics           *Metrics
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

func newClientAuth(c *ClientAuth, clock Clock, failuresPerMinute int, m *Metrics) *clientAuth {
	if c == nil {
		return nil
	}
	a := &clientAuth{ClientAuth: *c, compare: bcrypt.CompareHashAndPassword, verified: map[[sha256.Size]byte]bool{},
		passwords: newAttemptLimiter(clock, failuresPerMinute, true), tokens: newAttemptLimiter(clock, failuresPerMinute, false),
		turns: newPasswordTurns(m), metrics: m}
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
// the client gets, which never says which part was wrong, the 429 of an
// address past its allowance of failures, or the 503 of password checks
// past their global bounds.
//
// What costs no bcrypt comparison (a token, a remembered pair) is checked
// before any allowance and always gets in when right: behind a NAT, a load
// balancer or a NodePort that hides client addresses, one client with a
// stale token must not lock out every node that shares its address. A
// wrong token spends its address's allowance of wrong tokens, which holds
// back nothing but more wrong tokens; what would cost a comparison spends
// the allowance of comparisons, and is turned away once that is spent.
// Tokens are at least MinTokenLength bytes: guessing one is no use, with
// or without a limit.
func (a *clientAuth) check(r *http.Request) error {
	addr := attemptKey(r)
	var err error
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if tokenIn(a.Tokens, strings.TrimSpace(tok)) {
			return nil
		}
		err = a.tokens.fail(addr)
	} else if user, pass, ok := r.BasicAuth(); ok {
		if tokenIn(a.Tokens, pass) {
			return nil
		}
		if err = a.userOK(r.Context(), addr, user, pass); err == nil {
			return nil
		}
	}
	if s := errcode.StatusOf(err); s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable {
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

// userOK checks a user's password: nil when right, errWrongPassword, the
// 429 of an address with no attempt left, or the 503 of comparisons past
// their global bounds. A remembered pair is checked before any allowance:
// it costs no comparison.
func (a *clientAuth) userOK(ctx context.Context, addr, user, pass string) error {
	if len(a.Users) == 0 {
		// No user to find, nor a comparison to make: a wrong token.
		if err := a.tokens.fail(addr); err != nil {
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
	for {
		v, _, _ := a.verifying.Do(string(key[:]), func() (any, error) {
			return a.verify(ctx, addr, hash, known, key, pass), nil
		})
		err, _ := v.(error)
		if (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && ctx.Err() == nil {
			continue // another request's comparison, which ended while it waited for a turn
		}
		return err
	}
}

// verify compares pass with hash once the allowances and a turn allow it,
// and remembers the pair when it is right (and its user known).
func (a *clientAuth) verify(ctx context.Context, addr string, hash []byte, known bool, key [sha256.Size]byte, pass string) error {
	giveBack, err := a.passwords.take(addr)
	if err != nil {
		if errcode.StatusOf(err) == http.StatusServiceUnavailable {
			a.metrics.passwordChecksRejected.Inc()
		}
		return err
	}
	done, err := a.turns.turn(ctx)
	if err != nil {
		giveBack() // nothing was compared
		return err
	}
	wrong := a.compare(hash, []byte(pass)) != nil || !known
	done()
	if wrong {
		return errWrongPassword
	}
	giveBack()
	a.mu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified)
	}
	a.verified[key] = true
	a.mu.Unlock()
	return nil
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
