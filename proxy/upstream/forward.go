package upstream

import (
	"crypto/sha256"
	"net/http"
	"sync"
	"time"
)

// forwarding is the state of an upstream that forwards client credentials:
// one token source and one rate-limit hold per client's credentials, and
// which credentials the upstream lately confirmed for which repository.
type forwarding struct {
	mu        sync.Mutex
	tokens    map[[sha256.Size]byte]*tokenSource
	holds     map[[sha256.Size]byte]*rateHold
	confirmed map[confirmKey]time.Time // until when
}

type confirmKey struct {
	creds [sha256.Size]byte
	repo  string
}

const (
	// confirmTTL is how long an upstream's yes for (credentials,
	// repository) stands: revoking a client's access upstream takes effect
	// on the mirror within this time.
	confirmTTL = time.Minute
	// maxForwarded bounds the maps; beyond it they start over.
	maxForwarded = 4096
)

func newForwarding() *forwarding {
	return &forwarding{tokens: map[[sha256.Size]byte]*tokenSource{}, holds: map[[sha256.Size]byte]*rateHold{}, confirmed: map[confirmKey]time.Time{}}
}

// As returns the upstream as the client of r: with the client's own Basic
// credentials (none for an anonymous client) when u forwards credentials,
// otherwise u itself.
func (u *Registry) As(r *http.Request) (*Registry, error) {
	if u.forward == nil {
		return u, nil
	}
	var creds Credentials
	if user, pass, ok := r.BasicAuth(); ok {
		creds = Credentials{Username: user, Password: pass}
	} else if r.Header.Get("Authorization") != "" {
		return nil, u.unauthorized("only Basic credentials can be forwarded to upstream "+u.name, nil)
	}
	key := sha256.Sum256([]byte(creds.Username + "\x00" + creds.Password))
	f := u.forward
	f.mu.Lock()
	ts, ok := f.tokens[key]
	if !ok {
		if len(f.tokens) >= maxForwarded {
			clear(f.tokens)
		}
		ts = u.newTokenSource(creds)
		f.tokens[key] = ts
	}
	// A client's spent budget holds its own requests, not another
	// client's: one hold per credentials. Anonymous clients share one,
	// with the other replicas too; a client's own stays in this replica
	// (its record would name its credentials' hash in the shared cache).
	h, ok := f.holds[key]
	if !ok {
		if len(f.holds) >= maxForwarded {
			// Holds that ended (and those of credentials that never were
			// held: failed logins) go first; the rest only if still full.
			now := u.now()
			for k, old := range f.holds {
				if old.heldUntil(now).IsZero() {
					delete(f.holds, k)
				}
			}
			if len(f.holds) >= maxForwarded {
				clear(f.holds)
			}
		}
		h = &rateHold{}
		if creds.empty() {
			h.store, h.name = u.hold.store, u.name+"@anonymous"
		}
		f.holds[key] = h
	}
	f.mu.Unlock()
	v := *u
	v.creds, v.tokens, v.credsKey, v.hold = creds, ts, key, h
	return &v, nil
}

// confirmed is Repository.Confirmed for repo.
func (u *Registry) confirmed(repo string, now time.Time) bool {
	if u.forward == nil {
		return true
	}
	u.forward.mu.Lock()
	defer u.forward.mu.Unlock()
	until, ok := u.forward.confirmed[confirmKey{creds: u.credsKey, repo: repo}]
	return ok && now.Before(until)
}

// confirm is Repository.Confirm for repo.
func (u *Registry) confirm(repo string, now time.Time) {
	if u.forward == nil {
		return
	}
	u.forward.mu.Lock()
	defer u.forward.mu.Unlock()
	if len(u.forward.confirmed) >= maxForwarded {
		clear(u.forward.confirmed)
	}
	u.forward.confirmed[confirmKey{creds: u.credsKey, repo: repo}] = now.Add(confirmTTL)
}
