package proxy

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"sync"
	"time"
)

// forwarding is the state of an upstream that forwards client credentials:
// one token source per client's credentials, and which credentials the
// upstream lately confirmed for which repository.
type forwarding struct {
	mu        sync.Mutex
	tokens    map[[sha256.Size]byte]*tokenSource
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
	// maxForwarded bounds both maps; beyond it they start over.
	maxForwarded = 4096
)

func newForwarding() *forwarding {
	return &forwarding{tokens: map[[sha256.Size]byte]*tokenSource{}, confirmed: map[confirmKey]time.Time{}}
}

// as returns the upstream as the client of r: with the client's own Basic
// credentials (none for an anonymous client) when u forwards credentials,
// otherwise u itself.
func (u *upstream) as(r *http.Request) (*upstream, error) {
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
	f.mu.Unlock()
	v := *u
	v.creds, v.tokens, v.credsKey = creds, ts, key
	return &v, nil
}

// confirmAccess lets a client of a forwarding upstream read req.repo only
// once the upstream has said yes to the client's own credentials: a HEAD of
// the object asked for (for a repackaged layer or rewritten config, of its
// original), remembered for confirmTTL per credentials and repository.
// Nothing cached is served before that, and an upstream that cannot answer
// means no answer.
func (s *Server) confirmAccess(ctx context.Context, req distRequest) error {
	up := req.upstream
	if up.forward == nil {
		return nil
	}
	key := confirmKey{creds: up.credsKey, repo: req.repo}
	now := s.now()
	up.forward.mu.Lock()
	until, ok := up.forward.confirmed[key]
	up.forward.mu.Unlock()
	if ok && now.Before(until) {
		return nil
	}

	var path, notFound string
	var header http.Header
	if req.blob {
		dgst := req.digest
		if d, err := s.store.GetDerived(ctx, dgst); err == nil && d.Source != "" {
			dgst = d.Source
		}
		path, notFound = "/v2/"+req.repo+"/blobs/"+dgst.String(), CodeBlobUnknown
	} else {
		path, notFound = "/v2/"+req.repo+"/manifests/"+req.ref(), CodeManifestUnknown
		header = http.Header{"Accept": {strings.Join(defaultAccept, ", ")}}
	}
	resp, err := up.do(ctx, http.MethodHead, req.repo, path, nil, header)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return up.statusError(resp, notFound)
	}
	drain(resp)
	up.forward.mu.Lock()
	if len(up.forward.confirmed) >= maxForwarded {
		clear(up.forward.confirmed)
	}
	up.forward.confirmed[key] = now.Add(confirmTTL)
	up.forward.mu.Unlock()
	return nil
}
