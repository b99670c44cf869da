package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Credentials authenticate regnorm to one upstream. They are loaded by
// cmd/proxy from a file or the environment and never logged.
type Credentials struct {
	Username string
	Password string
}

func (c Credentials) empty() bool { return c.Username == "" && c.Password == "" }

// String keeps credentials out of logs even when a struct is printed whole.
func (c Credentials) String() string { return "<redacted>" }

// challenge is a parsed WWW-Authenticate header.
type challenge struct {
	scheme string // lower case: "bearer" or "basic"
	params map[string]string
}

// parseChallenge parses `Bearer realm="...",service="...",scope="..."`.
// Quoted values may contain commas and backslash escapes.
func parseChallenge(h string) (challenge, bool) {
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	if scheme == "" {
		return challenge{}, false
	}
	c := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	for rest = strings.TrimSpace(rest); rest != ""; {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		key = strings.ToLower(strings.TrimSpace(key))
		var val string
		if strings.HasPrefix(after, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(after) && after[i] != '"'; i++ {
				if after[i] == '\\' && i+1 < len(after) {
					i++
				}
				b.WriteByte(after[i])
			}
			val, rest = b.String(), after[min(i+1, len(after)):]
		} else {
			val, rest, _ = strings.Cut(after, ",")
			val = strings.TrimSpace(val)
		}
		c.params[key] = val
		rest = strings.TrimLeft(strings.TrimSpace(rest), ",")
		rest = strings.TrimSpace(rest)
	}
	return c, true
}

// tokenSource gets and caches bearer tokens for one upstream, one per scope,
// each until shortly before it expires.
type tokenSource struct {
	client  *http.Client
	mem     *memShare
	creds   Credentials
	now     func() time.Time
	onFetch func(result string)

	group  singleflight.Group
	mu     sync.Mutex
	realm  challenge // the last bearer challenge seen; lets new scopes skip the 401
	tokens map[string]cachedToken
}

type cachedToken struct {
	token   string
	expires time.Time
}

// maxTokens bounds the tokens one source keeps (one per repository scope).
const maxTokens = 4096

// maxTokenResponse caps a token service's answer. A token goes into an
// Authorization header, which servers cap at 8 to 16 KiB; an answer holds
// it twice at most (token, access_token), with a refresh token.
const maxTokenResponse = 64 << 10

// The token spec says to assume 60 s when expires_in is absent.
const defaultTokenLifetime = 60 * time.Second

func (ts *tokenSource) cached(scope string) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.tokens[scope]
	if !ok || !ts.now().Before(t.expires) {
		return "", false
	}
	return t.token, true
}

func (ts *tokenSource) knownRealm() (challenge, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.realm, ts.realm.scheme == "bearer"
}

// token returns a token for scope from the realm in c, fetching it once for
// any number of concurrent callers.
func (ts *tokenSource) token(ctx context.Context, c challenge, scope string) (string, error) {
	if tok, ok := ts.cached(scope); ok {
		return tok, nil
	}
	v, err, _ := ts.group.Do(scope, func() (any, error) {
		if tok, ok := ts.cached(scope); ok {
			return tok, nil
		}
		tok, err := ts.fetch(context.WithoutCancel(ctx), c, scope)
		if err != nil {
			ts.onFetch("error")
			return "", err
		}
		ts.onFetch("ok")
		return tok, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (ts *tokenSource) fetch(ctx context.Context, c challenge, scope string) (string, error) {
	realm, err := url.Parse(c.params["realm"])
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") {
		return "", fmt.Errorf("token realm %q is not an http(s) URL", c.params["realm"])
	}
	q := realm.Query()
	if svc := c.params["service"]; svc != "" {
		q.Set("service", svc)
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return "", err
	}
	if !ts.creds.empty() {
		req.SetBasicAuth(ts.creds.Username, ts.creds.Password)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("token request to %s: %w", realm.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", &tokenError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	}
	var body struct {
		Token       string    `json:"token"`
		AccessToken string    `json:"access_token"`
		ExpiresIn   int       `json:"expires_in"`
		IssuedAt    time.Time `json:"issued_at"`
	}
	h := ts.mem.hold()
	defer h.release()
	b, err := readWhole(resp.Body, resp.ContentLength, maxTokenResponse, h)
	if errors.Is(err, ErrBodyMemorySpent) {
		return "", err
	}
	if err == nil {
		err = json.Unmarshal(b, &body)
	}
	if err != nil {
		return "", fmt.Errorf("token response from %s: %w", realm.Host, err)
	}
	tok := body.Token
	if tok == "" {
		tok = body.AccessToken
	}
	if tok == "" {
		return "", fmt.Errorf("token response from %s has no token", realm.Host)
	}
	lifetime := defaultTokenLifetime
	if body.ExpiresIn > 0 {
		lifetime = time.Duration(body.ExpiresIn) * time.Second
	}
	issued := ts.now()
	if !body.IssuedAt.IsZero() && body.IssuedAt.Before(issued) {
		issued = body.IssuedAt
	}
	// Renew a little early so a token never expires in flight.
	expires := issued.Add(lifetime - min(lifetime/10, 10*time.Second))

	ts.mu.Lock()
	ts.realm = c
	if ts.tokens == nil {
		ts.tokens = map[string]cachedToken{}
	}
	if len(ts.tokens) >= maxTokens {
		// One scope per repository asked for: clients choose how many.
		now := ts.now()
		maps.DeleteFunc(ts.tokens, func(_ string, t cachedToken) bool { return !now.Before(t.expires) })
		if len(ts.tokens) >= maxTokens {
			clear(ts.tokens)
		}
	}
	ts.tokens[scope] = cachedToken{token: tok, expires: expires}
	ts.mu.Unlock()
	return tok, nil
}

func (ts *tokenSource) forget(scope string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.tokens, scope)
}

// tokenError is a refusal from the token endpoint.
type tokenError struct {
	status     int
	retryAfter string // its Retry-After, as sent
}

func (e *tokenError) Error() string {
	return fmt.Sprintf("token endpoint answered %d", e.status)
}
