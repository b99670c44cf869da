package upstream_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

func newRegistry(t *testing.T, h http.Handler, cfg upstream.Config) *upstream.Registry {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return registryAt(srv.URL, cfg)
}

func registryAt(base string, cfg upstream.Config) *upstream.Registry {
	cfg.URL, _ = url.Parse(base)
	if cfg.Name == "" {
		cfg.Name = "example"
	}
	return upstream.New(cfg, upstream.Options{
		Retry:   upstream.RetryPolicy{Attempts: 3, Backoff: time.Millisecond, MaxWait: 50 * time.Millisecond},
		Stall:   10 * time.Second,
		Metrics: upstream.NewMetrics(),
		Log:     slog.New(slog.DiscardHandler),
	})
}

func get(t *testing.T, r *upstream.Registry, repo string) (*http.Response, error) {
	t.Helper()
	return r.Do(context.Background(), http.MethodGet, repo, "/v2/"+repo+"/manifests/latest", nil, nil)
}

// A bearer challenge is answered with a token for the repository's pull
// scope, fetched once and then sent up front.
func TestBearerTokenPerScope(t *testing.T) {
	t.Parallel()
	var tokens, requests atomic.Int32
	var realm string
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		tokens.Add(1)
		io.WriteString(w, `{"token":"t-`+strings.TrimPrefix(r.URL.Query().Get("scope"), "repository:")+`","expires_in":300}`)
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		repo := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/latest")
		if r.Header.Get("Authorization") != "Bearer t-"+repo+":pull" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="example"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "{}")
	})
	srv := httptest.NewServer(mux) // the registry and its token service
	t.Cleanup(srv.Close)
	realm = srv.URL + "/token"
	r := registryAt(srv.URL, upstream.Config{})

	for _, repo := range []string{"a/b", "a/b", "c/d"} {
		resp, err := get(t, r, repo)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %v %v", repo, resp, err)
		}
		upstream.Drain(resp)
	}
	// a/b: 401, token, 200; a/b again: 200; c/d: token up front (the realm
	// is known), 200.
	if tokens.Load() != 2 || requests.Load() != 4 {
		t.Errorf("%d token fetches and %d registry requests; want 2 and 4", tokens.Load(), requests.Load())
	}
}

// A failure that may pass is retried; a Retry-After beyond the policy's
// wait is handed to the client instead, as an OCI error.
func TestRetries(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	r := newRegistry(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch n := calls.Add(1); {
		case strings.Contains(req.URL.Path, "busy"):
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusTooManyRequests)
		case n < 3:
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			io.WriteString(w, "{}")
		}
	}), upstream.Config{})

	resp, err := get(t, r, "flaky")
	if err != nil || resp.StatusCode != http.StatusOK || calls.Load() != 3 {
		t.Fatalf("flaky: %v %v after %d calls; want 200 after 3", resp, err, calls.Load())
	}
	upstream.Drain(resp)

	calls.Store(0)
	resp, err = get(t, r, "busy")
	if err != nil || calls.Load() != 1 {
		t.Fatalf("busy: %v after %d calls; want one answer", err, calls.Load())
	}
	e := r.StatusError(resp, errcode.ManifestUnknown)
	if e.Status != http.StatusTooManyRequests || e.Code != errcode.TooManyRequests || e.RetryAfter != 120*time.Second {
		t.Errorf("busy: %+v; want 429 TOOMANYREQUESTS, Retry-After 120s", e)
	}
	if !upstream.Unavailable(e) || upstream.Refused(e) {
		t.Errorf("a 429 should be unavailable, not a refusal")
	}
}

// With forwarding, each client's view asks with its own credentials, and
// a yes for one is not a yes for another.
func TestForwardedCredentials(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if user, pass, _ := req.BasicAuth(); user != "alice" || pass != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "{}")
	}), upstream.Config{ForwardCredentials: true})

	as := func(user string) *upstream.Registry { return asClient(t, r, user) }
	alice, bob := as("alice"), as("bob")
	if alice.Repository("private").Identity() == bob.Repository("private").Identity() {
		t.Fatal("two clients' views share an identity")
	}
	resp, err := get(t, alice, "private")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("alice: %v %v", resp, err)
	}
	upstream.Drain(resp)
	resp, err = get(t, bob, "private")
	if err != nil {
		t.Fatalf("bob: %v", err)
	}
	var e *errcode.Error
	if err := error(bob.StatusError(resp, errcode.ManifestUnknown)); !errors.As(err, &e) ||
		e.Status != http.StatusUnauthorized || e.Challenge == "" || !upstream.Refused(err) {
		t.Fatalf("bob: %v; want 401 with a Basic challenge for the mirror", err)
	}

	now := time.Now()
	alice.Repository("private").Confirm(now)
	if !alice.Repository("private").Confirmed(now) || bob.Repository("private").Confirmed(now) || alice.Repository("other").Confirmed(now) {
		t.Error("a confirmation reached past its credentials and repository")
	}
	if alice.Repository("private").Confirmed(now.Add(2 * time.Minute)) {
		t.Error("a confirmation outlived its lifetime")
	}
}

// With forwarding, a client's spent budget holds that client's manifest
// requests, not another client's: Alice's 429 keeps her next request from
// the upstream, and Bob's is sent and answered.
func TestForwardedRateLimitHoldsOnlyItsClient(t *testing.T) {
	t.Parallel()
	var alice, bob atomic.Int32
	dgst := digest.FromString("{}")
	r := newRegistry(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch user, _, _ := req.BasicAuth(); user {
		case "alice":
			alice.Add(1)
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
		case "bob":
			bob.Add(1)
			w.Header().Set("Docker-Content-Digest", dgst.String())
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", "2")
		default:
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}), upstream.Config{ForwardCredentials: true})
	as := func(user string) *upstream.Registry { return asClient(t, r, user) }
	ctx := context.Background()
	for range 2 {
		if _, err := as("alice").Repository("app").HeadManifest(ctx, "v1", nil); errcode.StatusOf(err) != http.StatusTooManyRequests {
			t.Fatalf("alice: %v, want 429", err)
		}
	}
	if n := alice.Load(); n != 1 {
		t.Fatalf("alice's requests sent: %d, want 1 (the second held)", n)
	}
	if got, err := as("bob").Repository("app").HeadManifest(ctx, "v1", nil); err != nil || got != dgst || bob.Load() != 1 {
		t.Fatalf("bob: %s, %v after %d requests; want his answer", got, err, bob.Load())
	}
}

// A token service's 429 is the client's 429 with its Retry-After, not a
// 502 retried at once.
func TestTokenServiceRateLimit(t *testing.T) {
	t.Parallel()
	var tokens atomic.Int32
	var realm string
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		tokens.Add(1)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="example"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	realm = srv.URL + "/token"
	r := registryAt(srv.URL, upstream.Config{})
	_, err := r.Repository("a/b").HeadManifest(context.Background(), "v1", nil)
	var e *errcode.Error
	if !errors.As(err, &e) || e.Status != http.StatusTooManyRequests || e.Code != errcode.TooManyRequests || e.RetryAfter != 30*time.Second {
		t.Fatalf("got %v, want 429 TOOMANYREQUESTS with Retry-After 30s", err)
	}
	if n := tokens.Load(); n != 1 {
		t.Fatalf("token requests: %d, want 1 (a rate limit is not retried at once)", n)
	}
}

// asClient is r as a client that forwards user's Basic credentials
// (password "pw").
func asClient(t *testing.T, r *upstream.Registry, user string) *upstream.Registry {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(user, "pw")
	v, err := r.As(req)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
