// Package upstream is regnorm's client for the upstream registries, and
// the only place that speaks the registry protocol to them: callers ask a
// Repository (one repository of one upstream, as one client) for a
// manifest, a blob or a page of tags, and never build a /v2/ path. It owns
// one Registry per configured upstream, with its authentication (bearer
// tokens per repository scope, Basic auth, a client's own credentials when
// they are forwarded), retries of failures that may pass, a guard that ends
// a body that stops, a dialer that keeps the upstream's redirects and token
// realms out of the network regnorm runs in (behind an HTTP proxy too), the
// per-request budget of upstream requests, the hold on an upstream's
// manifests after a rate limit, shared with the other replicas (hold.go),
// and the bound on the memory the
// answers it reads whole hold (BodyMemory); and it checks what comes back as part of speaking the
// protocol: a manifest's digest, size and media type, a blob's size bound,
// a tag list's shape. The upstream's refusals are OCI errors (errcode) a
// client can be given as they are. It knows nothing of the cache or of
// clients beyond the credentials it is handed.
package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/label"
)

// Config is one upstream registry, ready to use: cmd/proxy has read its CA
// file and credentials.
type Config struct {
	// Name is what containerd sends as ns, e.g. "docker.io".
	Name string
	// URL is the endpoint, e.g. https://registry-1.docker.io.
	URL *url.URL
	// RootCAs, when set, replaces the system roots for this upstream.
	RootCAs *x509.CertPool
	// Credentials, when set, are used for Basic auth and token requests.
	Credentials Credentials
	// ForwardCredentials uses each client's own Basic credentials upstream
	// instead of Credentials, and serves cached content to a client only
	// after the upstream confirms that client may read the repository.
	ForwardCredentials bool
	// AllowRedirectsTo is where the upstream's redirects and token realm
	// may lead inside the network (ranges, host names): for a registry
	// whose storage or token service is there too. The upstream's own host
	// and port are always allowed (see dialGuard).
	AllowRedirectsTo AllowList
	// MaxBlobSize bounds a blob read from this upstream, in bytes: one
	// announced larger is refused, one that sends more is stopped. 0 means
	// DefaultMaxBlobSize.
	MaxBlobSize int64
	// MaxDownloads is how many blob downloads from this upstream may run at
	// once, within the global bound; 0 takes the fetcher's default share.
	MaxDownloads int
}

// RetryPolicy bounds how an upstream request is retried after a failure
// that may pass: a network error, a failed token service, 5xx or 429.
type RetryPolicy struct {
	// Attempts is how many times a request is sent at most (1: no retry).
	Attempts int
	// Backoff is the wait before the first retry; it doubles each time,
	// with jitter.
	Backoff time.Duration
	// MaxWait is the longest wait for one retry. A Retry-After beyond it is
	// passed on to the client instead of waited out.
	MaxWait time.Duration
}

// DefaultRetryPolicy is three attempts, 200 ms then 400 ms apart, waiting
// out a Retry-After of up to 5 s.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Attempts: 3, Backoff: 200 * time.Millisecond, MaxWait: 5 * time.Second}
}

// Wait is how long to wait before attempt number next (2 for the first
// retry), given the Retry-After the upstream asked for, if any. ok is false
// when the policy says give up.
func (p RetryPolicy) Wait(next int, asked time.Duration) (d time.Duration, ok bool) {
	if next > p.Attempts {
		return 0, false
	}
	if asked > 0 {
		return asked, asked <= p.MaxWait
	}
	d = p.Backoff << (next - 2)
	d += rand.N(d/2 + 1) // spread replicas and clients apart
	return min(d, p.MaxWait), true
}

// Defaults of zero fields of Options and Config.
const (
	// DefaultStall abandons a response silent this long.
	DefaultStall = 30 * time.Second
	// DefaultMaxBlobSize bounds one blob downloaded from an upstream.
	DefaultMaxBlobSize = 16 << 30
)

// Options are what every Registry shares.
type Options struct {
	// Retry bounds retries of failed requests; the zero value means
	// DefaultRetryPolicy().
	Retry RetryPolicy
	// Stall abandons a response that sends nothing for this long, before
	// its headers or in its body. Default DefaultStall.
	Stall time.Duration
	// Now is the time tokens and confirmations go by (time.Now if nil).
	Now func() time.Time
	// Metrics count requests, retries and token fetches (NewMetrics).
	Metrics *Metrics
	// Memory bounds the answers read whole, of every Registry it is
	// given to (nil: a DefaultBodyMemory of this one's own).
	Memory *BodyMemory
	// Holds shares each upstream's rate-limit hold with the other
	// replicas (hold.go); nil keeps it to this one.
	Holds HoldStore
	Log   *slog.Logger
}

// Registry is the client for one upstream registry. A Registry made by As
// is a view with one client's credentials; it shares everything else.
type Registry struct {
	name   string
	base   *url.URL
	client *http.Client
	creds  Credentials
	tokens *tokenSource
	basic  *atomic.Bool // the upstream asked for Basic auth
	retry  RetryPolicy
	stall  time.Duration // a response that sends nothing for this long is abandoned
	health *health
	hold   *rateHold // shared by the views As makes
	// forward is set for an upstream that forwards client credentials;
	// clients then get a view of it with their own (see As).
	forward *forwarding
	maxBlob int64 // 0: no bound
	share   int   // downloads at once; 0: the fetcher's default
	mem     *memShare
	// credsKey identifies creds in a view made by As.
	credsKey [sha256.Size]byte
	// fingerprint is the configuration's (Fingerprint): the upstream's
	// own credentials, not a view's.
	fingerprint string
	now         func() time.Time
	metrics     *Metrics
	log         *slog.Logger
}

// New is the client for the upstream cfg describes.
func New(cfg Config, opts Options) *Registry {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Retry == (RetryPolicy{}) {
		opts.Retry = DefaultRetryPolicy()
	}
	if opts.Stall <= 0 {
		opts.Stall = DefaultStall
	}
	if cfg.MaxBlobSize <= 0 {
		cfg.MaxBlobSize = DefaultMaxBlobSize
	}
	if opts.Memory == nil {
		opts.Memory = NewBodyMemory(DefaultBodyMemory, 1)
	}
	client := &http.Client{Transport: newTransport(cfg, opts.Stall), CheckRedirect: checkRedirect}
	u := &Registry{
		name:    cfg.Name,
		base:    cfg.URL,
		client:  client,
		creds:   cfg.Credentials,
		retry:   opts.Retry,
		stall:   opts.Stall,
		basic:   &atomic.Bool{},
		maxBlob: cfg.MaxBlobSize,
		share:   cfg.MaxDownloads,
		mem:     opts.Memory.shareFor(cfg.Name, opts.Metrics),
		health:  &health{},
		hold:    &rateHold{store: opts.Holds, name: cfg.Name},
		now:     opts.Now,
		metrics: opts.Metrics,
		log:     opts.Log.With("upstream", cfg.Name),
	}
	u.tokens = u.newTokenSource(cfg.Credentials)
	if cfg.ForwardCredentials {
		u.forward = newForwarding()
	}
	u.fingerprint = u.computeFingerprint()
	opts.Metrics.preset(cfg.Name)
	return u
}

// Name is the upstream's name, as containerd sends it in ns.
func (u *Registry) Name() string { return u.name }

// Endpoint is the upstream's URL without credentials or query, for the
// status page.
func (u *Registry) Endpoint() string { return u.base.Scheme + "://" + u.base.Host + u.base.Path }

// Forwards reports whether clients' own credentials are used upstream.
func (u *Registry) Forwards() bool { return u.forward != nil }

// Fingerprint is what, in this upstream's configuration, shapes its
// answers: two replicas with the same fingerprint ask it alike, so one's
// answer stands for the other's clients. It holds a hash of the
// credentials: keep it among replicas.
func (u *Registry) Fingerprint() string { return u.fingerprint }

// computeFingerprint is Fingerprint's value, computed once in New.
func (u *Registry) computeFingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %q %d %t", u.name, u.base.String(), u.creds.Username, u.creds.Password, u.maxBlob, u.forward != nil)
	return hex.EncodeToString(h.Sum(nil))
}

// MaxBlobSize is the largest blob this upstream may send (Config.MaxBlobSize).
func (u *Registry) MaxBlobSize() int64 { return u.maxBlob }

// Health is when the upstream last answered well and badly, and how.
func (u *Registry) Health() (lastOK, lastFail time.Time, failure string) { return u.health.snapshot() }

func (u *Registry) newTokenSource(creds Credentials) *tokenSource {
	return &tokenSource{
		client:  u.client,
		mem:     u.mem,
		creds:   creds,
		now:     u.now,
		onFetch: func(result string) { u.metrics.tokenFetches.WithLabelValues(u.name, result).Inc() },
	}
}

// newTransport has connect and header timeouts but no overall timeout: a
// large blob may take as long as it takes while bytes keep flowing (the
// stall guard ends a body that stops). It dials through a dialGuard: where
// the upstream sends regnorm, not where the operator did, is checked.
func newTransport(cfg Config, stall time.Duration) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = stall
	t.MaxIdleConnsPerHost = 32
	if cfg.RootCAs != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	}
	return newDialGuard(cfg.URL, cfg.AllowRedirectsTo).wrap(t)
}

// do sends a request for repo to the upstream, retrying as u.retry allows
// when the failure may pass. A response it returns may still be a failure
// (the last attempt's); the caller closes the body, or hands the response
// to statusError. An error is an *errcode.Error, or the context's.
func (u *Registry) do(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	return u.doHeld(ctx, false, method, repo, path, query, header)
}

// doCounted is do for a request the upstream counts against its rate
// limit: while the upstream is held (hold.go), it is not sent, and its
// caller gets 429 with Retry-After.
func (u *Registry) doCounted(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	return u.doHeld(ctx, true, method, repo, path, query, header)
}

func (u *Registry) doHeld(ctx context.Context, counted bool, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		if counted {
			// Each attempt: a retry after a 429 waits out its Retry-After,
			// and one for another replica's hold is not sent at all.
			if err := u.held(ctx); err != nil {
				return nil, err
			}
		}
		resp, err := u.doOnce(ctx, method, repo, path, query, header)
		if counted && err == nil {
			// Only what the upstream counts sets a hold: a blob's 429 (its
			// CDN's, say) or a token step's says nothing of manifests.
			u.noteHold(ctx, resp)
		}
		reason, asked := retryReason(resp, err)
		if reason == "" {
			return resp, err
		}
		wait, ok := u.retry.Wait(attempt+1, asked)
		if dl, has := ctx.Deadline(); has && time.Until(dl) < wait {
			ok = false // the caller would be gone before the retry
		}
		if !ok {
			return resp, err
		}
		if resp != nil {
			drain(resp)
		}
		u.metrics.Retry(u.name, reason)
		u.log.Debug("retrying upstream request", "path", path, "reason", reason, "wait", wait, "attempt", attempt+1)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// retryReason says why a failed attempt may succeed if sent again ("" if it
// may not), and the wait the upstream asked for.
func retryReason(resp *http.Response, err error) (reason string, asked time.Duration) {
	if refusedHop(err) {
		return "", 0 // it would be refused again
	}
	if err != nil {
		var e *errcode.Error
		if errors.As(err, &e) && e.Status == http.StatusBadGateway {
			return "unreachable", 0 // a network error or a failed token service
		}
		return "", 0
	}
	switch s := resp.StatusCode; s {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return label.Status(s), retryAfter(resp.Header.Get("Retry-After"), time.Now())
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		return label.Status(s), 0
	}
	return "", 0
}

// doOnce sends one request for repo to the upstream, authenticating as the
// upstream asks: a cached or new bearer token for the repository's pull
// scope, or Basic auth. The caller closes the body.
func (u *Registry) doOnce(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	target := *u.base
	target.Path = strings.TrimSuffix(u.base.Path, "/") + path
	target.RawQuery = query.Encode()
	scope := "repository:" + repo + ":pull"

	send := func() (*http.Response, error) {
		if err := Spend(ctx); err != nil {
			return nil, err
		}
		// Cancelled by the stall guard when the body stops, or when an
		// error leaves no body to close.
		rctx, cancel := context.WithCancelCause(ctx)
		req, err := http.NewRequestWithContext(rctx, method, target.String(), nil)
		if err != nil {
			cancel(nil)
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", "regnorm")
		if err := u.authorize(rctx, req, scope); err != nil {
			cancel(nil)
			return nil, err
		}
		start := time.Now()
		resp, err := u.client.Do(req)
		u.metrics.duration.WithLabelValues(u.name).Observe(time.Since(start).Seconds())
		if err != nil {
			cancel(nil)
			u.metrics.requests.WithLabelValues(u.name, "error").Inc()
			u.health.record(false, "unreachable")
			return nil, err
		}
		u.metrics.requests.WithLabelValues(u.name, label.Status(resp.StatusCode)).Inc()
		u.metrics.noteRateLimit(u.name, resp.Header)
		// The code, as its metric label gives it, never the reason phrase:
		// that is the upstream's own text, as long as it likes.
		u.health.record(resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests, "HTTP "+label.Status(resp.StatusCode))
		resp.Body = newStallGuard(resp.Body, u.stall, cancel)
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
		return nil, u.unauthorized("upstream "+u.name+" requires authentication", nil)
	}
	switch c.scheme {
	case "bearer":
		u.tokens.forget(scope)
		if _, err := u.tokens.token(ctx, c, scope); err != nil {
			return nil, u.tokenFailed(err)
		}
	case "basic":
		if u.creds.empty() {
			return nil, u.unauthorized("upstream "+u.name+" requires credentials", nil)
		}
		u.basic.Store(true)
	default:
		// The scheme is the upstream's text: the log gets a little of it,
		// the client none.
		return nil, errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "upstream "+u.name+" asks for an unsupported auth scheme",
			fmt.Errorf("WWW-Authenticate scheme %.64q", c.scheme))
	}
	resp, err = send()
	if err != nil {
		return nil, u.unreachable(err)
	}
	return resp, nil
}

// authorize adds what the upstream asked for last time, so that after the
// first 401 requests go through in one round trip.
func (u *Registry) authorize(ctx context.Context, req *http.Request, scope string) error {
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

func (u *Registry) unreachable(err error) error {
	var e *errcode.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if refusedHop(err) {
		return errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" redirected to an address regnorm does not follow", err)
	}
	return errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" unreachable", err)
}

func (u *Registry) tokenFailed(err error) error {
	if errors.Is(err, ErrBodyMemorySpent) {
		return err // already the 503 a client gets
	}
	if refusedHop(err) {
		return errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" names a token service regnorm does not follow", err)
	}
	var te *tokenError
	if errors.As(err, &te) && (te.status == http.StatusUnauthorized || te.status == http.StatusForbidden) {
		return u.unauthorized("upstream "+u.name+" refused the credentials", err)
	}
	if te != nil && te.status == http.StatusTooManyRequests {
		// A rate limit, not an outage: the client's 429, with the time to
		// come back, and not asked again at once.
		e := errcode.New(http.StatusTooManyRequests, errcode.TooManyRequests, "upstream "+u.name+" token service rate limit", err)
		if e.RetryAfter = retryAfter(te.retryAfter, u.now()); e.RetryAfter <= 0 {
			e.RetryAfter = defaultHold
		}
		return e
	}
	return errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" token service failed", err)
}

// unauthorized is the 401 for a client. When client credentials are
// forwarded it carries a Basic challenge, so that containerd sends the
// credentials it has for the mirror and the next attempt can succeed.
func (u *Registry) unauthorized(msg string, cause error) *errcode.Error {
	e := errcode.New(http.StatusUnauthorized, errcode.Unauthorized, msg, cause)
	if u.forward != nil {
		e.Challenge = `Basic realm="regnorm"`
	}
	return e
}

// health remembers how an upstream last answered, for the status page.
type health struct {
	mu       sync.Mutex
	lastOK   time.Time
	lastFail time.Time
	failure  string // regnorm's own words: "HTTP 503", "unreachable"; never the upstream's
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
func (u *Registry) statusError(resp *http.Response, notFound string) *errcode.Error {
	// For the log only: when the memory for answers is spent, the answer
	// stands without it.
	h := u.mem.hold()
	body, err := readWhole(io.LimitReader(resp.Body, maxErrorBody), -1, maxErrorBody, h)
	resp.Body.Close()
	if errors.Is(err, ErrBodyMemorySpent) {
		body = []byte("(not read: memory for upstream answers spent)")
	}
	cause := fmt.Errorf("upstream %s answered %d: %s", u.name, resp.StatusCode, strings.TrimSpace(string(body)))
	h.release()
	switch s := resp.StatusCode; {
	case s == http.StatusNotFound:
		return errcode.New(http.StatusNotFound, notFound, "not found upstream", cause)
	case s == http.StatusUnauthorized:
		return u.unauthorized("upstream "+u.name+" requires authentication", cause)
	case s == http.StatusForbidden:
		return errcode.New(http.StatusForbidden, errcode.Denied, "upstream "+u.name+" denied access", cause)
	case s == http.StatusTooManyRequests:
		e := errcode.New(http.StatusTooManyRequests, errcode.TooManyRequests, "upstream "+u.name+" rate limit", cause)
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), u.now())
		if until := u.HeldUntil(); e.RetryAfter <= 0 && !until.IsZero() {
			// Without a Retry-After of its own: when the hold it set ends.
			e.RetryAfter = max(until.Sub(u.now()), time.Second)
		}
		return e
	case s == http.StatusServiceUnavailable:
		e := errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "upstream "+u.name+" unavailable", cause)
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), u.now())
		return e
	default:
		return errcode.New(http.StatusBadGateway, errcode.Unavailable, fmt.Sprintf("upstream %s answered %d", u.name, s), cause)
	}
}

// retryAfter parses a Retry-After header (seconds or an HTTP date), at
// most maxHold: what an upstream asks for, a client is told, and a hold
// lasts are all bounded by it.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(min(s, int(maxHold/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return min(t.Sub(now), maxHold)
	}
	return 0
}

// Unavailable reports whether err means upstream could not answer (as opposed
// to answering no), which is when a stale cached answer is better than none.
func Unavailable(err error) bool {
	s := errcode.StatusOf(err)
	return s == http.StatusTooManyRequests || s >= 500
}

// Refused reports whether err is an upstream's no to one client's
// credentials or repository (401, 403, 404): it says nothing about another
// client's.
func Refused(err error) bool {
	switch errcode.StatusOf(err) {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// drain reads what is left of a response body, up to a small cap, so that
// its connection can be reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}
