package regtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // Basic auth for the in-process registry
	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // the in-process registry's storage
	"github.com/go-jose/go-jose/v4"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
)

// Options configure an in-process registry.
type Options struct {
	// TokenAuth puts the registry behind Docker token auth.
	TokenAuth bool
	// Username and Password, when set with TokenAuth, are the only
	// credentials the token server accepts; anonymous requests are refused.
	Username, Password string
	// TokenLifetime is the expires_in of issued tokens (default 5 minutes).
	TokenLifetime time.Duration
	// BasicAuth puts the registry behind htpasswd Basic auth for Username
	// and Password instead.
	BasicAuth bool
	// Accounts, with TokenAuth, replace Username and Password: each may
	// pull only its Repos; anonymous clients get tokens that grant nothing.
	Accounts []Account
}

// Account is a token-auth user with pull rights on some repositories.
type Account struct {
	Username, Password string
	Repos              []string
}

// Registry is a distribution registry on an httptest server.
type Registry struct {
	// URL is the registry's base URL, http://127.0.0.1:port.
	URL string
	// TokenRequests counts requests to the token server.
	TokenRequests atomic.Int64
	// Issued holds every token the token server issued, for tests that
	// check tokens never leak.
	Issued tokenLog
	// TokenFailure, when not zero, is the status the token server answers
	// every request with, to test a failing token service.
	TokenFailure atomic.Int32
	// Requests counts requests to the registry, by "METHOD kind" where kind
	// is manifests, blobs, tags or other.
	requests countMap

	opts   Options
	signer jose.Signer
}

const (
	service = "regtest-registry"
	issuer  = "regtest-issuer"
	keyID   = "regtest-key"
)

// Start runs a registry with inmemory storage until the test ends.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	logrus.SetOutput(io.Discard) // distribution logs through logrus' global logger
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = 5 * time.Minute
	}
	r := &Registry{opts: opts}

	config := &configuration.Configuration{}
	config.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	config.Log.AccessLog.Disabled = true
	config.HTTP.Secret = "regtest"
	// Foreign and non-distributable layers name where they live (see
	// BuildImage).
	config.Validation.Manifests.URLs.Allow = []string{`^https://layers\.invalid/`}
	if opts.TokenAuth {
		tokenSrv := httptest.NewServer(http.HandlerFunc(r.serveToken))
		t.Cleanup(tokenSrv.Close)
		config.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":   tokenSrv.URL + "/token",
			"service": service,
			"issuer":  issuer,
			"jwks":    r.newSigningKey(t),
		}}
	}
	if opts.BasicAuth {
		config.Auth = configuration.Auth{"htpasswd": configuration.Parameters{
			"realm": "regtest",
			"path":  writeHtpasswd(t, opts.Username, opts.Password),
		}}
	}
	app := handlers.NewApp(context.Background(), config)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.add(req.Method + " " + kindOf(req.URL.Path))
		app.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// Requests returns how many requests of method reached kind (manifests,
// blobs, tags) since the registry started.
func (r *Registry) Requests(method, kind string) int64 {
	return r.requests.get(method + " " + kind)
}

func kindOf(path string) string {
	for _, k := range []string{"/manifests/", "/blobs/uploads/", "/blobs/", "/tags/"} {
		if strings.Contains(path, k) {
			return strings.Trim(k, "/")
		}
	}
	return "other"
}

func writeHtpasswd(t testing.TB, user, password string) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newSigningKey makes the key tokens are signed with and writes its public
// half as the JWKS file the registry trusts.
func (r *Registry) newSigningKey(t testing.TB) string {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: priv},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", keyID))
	if err != nil {
		t.Fatal(err)
	}
	jwks := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: priv.Public(), KeyID: keyID, Algorithm: string(jose.ES256), Use: "sig"}}}
	b, err := json.Marshal(jwks)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serveToken is a token server: it grants what the scope asks for to the
// configured user (or to anyone when no user is configured).
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	r.TokenRequests.Add(1)
	if status := r.TokenFailure.Load(); status != 0 {
		http.Error(w, "token service failure", int(status))
		return
	}
	if r.opts.Username != "" {
		u, p, ok := req.BasicAuth()
		if !ok || u != r.opts.Username || p != r.opts.Password {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
	}
	scopes := req.URL.Query()["scope"]
	if len(r.opts.Accounts) > 0 {
		scopes = r.grant(req, scopes)
	}
	if req.URL.Query().Get("service") != service {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	tok, err := r.Token(scopes...)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	r.Issued.add(tok)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token":      tok,
		"expires_in": int(r.opts.TokenLifetime / time.Second),
		"issued_at":  time.Now().UTC().Format(time.RFC3339),
	})
}

// grant keeps the scopes the account behind req may have: pull on its
// repositories. Unknown credentials get nothing, as anonymous clients do.
func (r *Registry) grant(req *http.Request, scopes []string) []string {
	user, pass, _ := req.BasicAuth()
	var granted []string
	for _, a := range r.opts.Accounts {
		if a.Username != user || a.Password != pass {
			continue
		}
		for _, s := range scopes {
			parts := strings.Split(s, ":")
			if len(parts) == 3 && slices.Contains(a.Repos, parts[1]) {
				granted = append(granted, parts[0]+":"+parts[1]+":pull")
			}
		}
	}
	return granted
}

// Token mints a token for scopes such as "repository:foo:pull,push".
func (r *Registry) Token(scopes ...string) (string, error) {
	now := time.Now()
	claims := token.ClaimSet{
		Issuer:     issuer,
		Subject:    r.opts.Username,
		Audience:   token.AudienceList{service},
		Expiration: now.Add(r.opts.TokenLifetime).Unix(),
		NotBefore:  now.Add(-time.Minute).Unix(),
		IssuedAt:   now.Unix(),
		JWTID:      now.Format(time.RFC3339Nano),
	}
	for _, s := range scopes {
		parts := strings.Split(s, ":")
		if len(parts) != 3 {
			continue
		}
		claims.Access = append(claims.Access, &token.ResourceActions{Type: parts[0], Name: parts[1], Actions: strings.Split(parts[2], ",")})
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	sig, err := r.signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return sig.CompactSerialize()
}

// Client returns a client that pushes to this registry, minting its own
// tokens when the registry is behind token auth.
func (r *Registry) Client() *Client {
	c := &Client{Base: r.URL}
	switch {
	case r.opts.TokenAuth:
		c.Token = func(repo string) (string, error) { return r.Token("repository:" + repo + ":pull,push") }
	case r.opts.BasicAuth:
		c.Username, c.Password = r.opts.Username, r.opts.Password
	}
	return c
}

// tokenLog records issued tokens.
type tokenLog struct {
	mu     sync.Mutex
	tokens []string
}

func (l *tokenLog) add(tok string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = append(l.tokens, tok)
}

// All returns the tokens issued so far.
func (l *tokenLog) All() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.tokens)
}
