package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// UpstreamConfig is one upstream registry, ready to use: cmd/proxy has read
// its CA file and credentials.
type UpstreamConfig struct {
	// Name is what containerd sends as ns, e.g. "docker.io".
	Name string
	// URL is the endpoint, e.g. https://registry-1.docker.io.
	URL *url.URL
	// RootCAs, when set, replaces the system roots for this upstream.
	RootCAs *x509.CertPool
	// Credentials, when set, are used for Basic auth and token requests.
	Credentials Credentials
}

// upstream is the client for one upstream registry.
type upstream struct {
	name    string
	base    *url.URL
	client  *http.Client
	creds   Credentials
	tokens  *tokenSource
	basic   atomic.Bool // the upstream asked for Basic auth
	health  health
	metrics *Metrics
	log     *slog.Logger
}

func newUpstream(cfg UpstreamConfig, m *Metrics, log *slog.Logger) *upstream {
	client := &http.Client{Transport: newTransport(cfg.RootCAs)}
	u := &upstream{
		name:    cfg.Name,
		base:    cfg.URL,
		client:  client,
		creds:   cfg.Credentials,
		metrics: m,
		log:     log.With("upstream", cfg.Name),
	}
	u.tokens = &tokenSource{
		client:  client,
		creds:   cfg.Credentials,
		now:     time.Now,
		onFetch: func(result string) { m.tokenFetches.WithLabelValues(cfg.Name, result).Inc() },
	}
	return u
}

// newTransport has connect and header timeouts but no overall timeout: a
// large blob may take as long as it takes while bytes keep flowing.
func newTransport(roots *x509.CertPool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 60 * time.Second
	t.MaxIdleConnsPerHost = 32
	if roots != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return t
}

// do sends one request for repo to the upstream, authenticating as the
// upstream asks: a cached or new bearer token for the repository's pull
// scope, or Basic auth. The caller closes the body.
func (u *upstream) do(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	target := *u.base
	target.Path = strings.TrimSuffix(u.base.Path, "/") + path
	target.RawQuery = query.Encode()
	scope := "repository:" + repo + ":pull"

	send := func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", "regnorm")
		if err := u.authorize(ctx, req, scope); err != nil {
			return nil, err
		}
		start := time.Now()
		resp, err := u.client.Do(req)
		u.metrics.upstreamDuration.WithLabelValues(u.name).Observe(time.Since(start).Seconds())
		if err != nil {
			u.metrics.upstreamRequests.WithLabelValues(u.name, "error").Inc()
			u.health.record(false, "unreachable")
			return nil, err
		}
		u.metrics.upstreamRequests.WithLabelValues(u.name, strconv.Itoa(resp.StatusCode)).Inc()
		u.health.record(resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests, resp.Status)
		return resp, nil
	}

	resp, err := send()
	if err != nil {
		return nil, u.unreachable(err)
	}
	if resp.StatusCode != http.StatusUnauthorized {
		return resp, nil
	}
	// A 401: learn the challenge, get what it asks for, and try once more.
	c, ok := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	drain(resp)
	if !ok {
		return nil, newError(http.StatusUnauthorized, CodeUnauthorized, "upstream "+u.name+" requires authentication", nil)
	}
	switch c.scheme {
	case "bearer":
		u.tokens.forget(scope)
		if _, err := u.tokens.token(ctx, c, scope); err != nil {
			return nil, u.tokenFailed(err)
		}
	case "basic":
		if u.creds.empty() {
			return nil, newError(http.StatusUnauthorized, CodeUnauthorized, "upstream "+u.name+" requires credentials", nil)
		}
		u.basic.Store(true)
	default:
		return nil, newError(http.StatusUnauthorized, CodeUnauthorized, "upstream "+u.name+" asks for unsupported auth scheme "+c.scheme, nil)
	}
	resp, err = send()
	if err != nil {
		return nil, u.unreachable(err)
	}
	return resp, nil
}

// authorize adds what the upstream asked for last time, so that after the
// first 401 requests go through in one round trip.
func (u *upstream) authorize(ctx context.Context, req *http.Request, scope string) error {
	if c, ok := u.tokens.knownRealm(); ok {
		tok, err := u.tokens.token(ctx, c, scope)
		if err != nil {
			return u.tokenFailed(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		return nil
	}
	if u.basic.Load() {
		req.SetBasicAuth(u.creds.Username, u.creds.Password)
	}
	return nil
}

func (u *upstream) unreachable(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return newError(http.StatusBadGateway, CodeUnavailable, "upstream "+u.name+" unreachable", err)
}

func (u *upstream) tokenFailed(err error) error {
	var te *tokenError
	if errors.As(err, &te) && (te.status == http.StatusUnauthorized || te.status == http.StatusForbidden) {
		return newError(http.StatusUnauthorized, CodeUnauthorized, "upstream "+u.name+" refused the credentials", err)
	}
	return newError(http.StatusBadGateway, CodeUnavailable, "upstream "+u.name+" token service failed", err)
}

// health remembers how an upstream last answered, for the status page.
type health struct {
	mu       sync.Mutex
	lastOK   time.Time
	lastFail time.Time
	failure  string // status or "unreachable": never a URL or a credential
}

func (h *health) record(ok bool, what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ok {
		h.lastOK = time.Now()
	} else {
		h.lastFail, h.failure = time.Now(), what
	}
}

func (h *health) snapshot() (lastOK, lastFail time.Time, failure string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastOK, h.lastFail, h.failure
}

// maxErrorBody caps how much of an upstream error body is read for the log.
const maxErrorBody = 4 << 10

// statusError maps a non-2xx upstream response to the OCI error the client
// gets. notFound is the code for a 404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN...).
// It reads a capped part of the body for the log and closes it.
func (u *upstream) statusError(resp *http.Response, notFound string) *Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	cause := fmt.Errorf("upstream %s answered %d: %s", u.name, resp.StatusCode, strings.TrimSpace(string(body)))
	switch s := resp.StatusCode; {
	case s == http.StatusNotFound:
		return newError(http.StatusNotFound, notFound, "not found upstream", cause)
	case s == http.StatusUnauthorized:
		return newError(http.StatusUnauthorized, CodeUnauthorized, "upstream "+u.name+" requires authentication", cause)
	case s == http.StatusForbidden:
		return newError(http.StatusForbidden, CodeDenied, "upstream "+u.name+" denied access", cause)
	case s == http.StatusTooManyRequests:
		e := newError(http.StatusTooManyRequests, CodeTooManyRequests, "upstream "+u.name+" rate limit", cause)
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		return e
	case s == http.StatusServiceUnavailable:
		e := newError(http.StatusServiceUnavailable, CodeUnavailable, "upstream "+u.name+" unavailable", cause)
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		return e
	default:
		return newError(http.StatusBadGateway, CodeUnavailable, fmt.Sprintf("upstream %s answered %d", u.name, s), cause)
	}
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// unavailable reports whether err means upstream could not answer (as opposed
// to answering no), which is when a stale cached answer is better than none.
func unavailable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}
