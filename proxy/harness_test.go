package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// harness is a proxy in front of a real registry, with a fault-injecting
// front between them.
type harness struct {
	reg   *regtest.Registry
	front *faultyFront
	store *cache.Store
	root  string // the filesystem cache's directory, when the harness made it
	url   string
	srv   *proxy.Server
	built built // srv's parts
	// webhookURL serves the admission webhook, with harnessOptions.webhook.
	webhookURL string
	logs       *syncBuffer
	opts       harnessOptions
}

type harnessOptions struct {
	registry     regtest.Options
	credentials  upstream.Credentials
	tagTTL       time.Duration
	rules        *ruleset.Policy
	platforms    *normalize.Platforms
	deadline     time.Duration
	patient      time.Duration
	eviction     cache.EvictionPolicy
	stall        time.Duration
	maxLayerSize int64
	// maxZstdWindow is normalize.maxZstdWindow (default 8 MiB).
	maxZstdWindow int64
	layerWork     normalize.WorkLimits
	clientAuth    *proxy.ClientAuth
	// noReportToken configures no node report token: every report is
	// refused. Otherwise reporter's token is the one.
	noReportToken bool
	// hostsDir is nodes.hostsDir (default /etc/containerd/certs.d).
	hostsDir string
	// authFailures is AuthFailuresPerMinute.
	authFailures int
	forward      bool
	// attest, when set, makes the variants' attestations (cmd/proxy
	// always sets one; the tests that look at them do).
	attest  *attest.Maker
	retry   upstream.RetryPolicy
	fetches blobfetch.Limits
	// clock, when set, replaces the system clock.
	clock *fakeClock
	// manualMaintenance: the test runs maintenance passes itself, with
	// the eviction policy, instead of the server's loop.
	manualMaintenance bool
	// store, when set, replaces the filesystem cache on a temporary
	// directory.
	store *cache.Store
	// upstreamURL replaces the fault front as the upstream (an address
	// nothing listens on, for instance).
	upstreamURL string
	// upstream adjusts the upstream's configuration (its limits, whether
	// it may redirect inward).
	upstream func(*upstream.Config)
	// more are upstreams besides docker.io.
	more []upstream.Config
	// bodyMemory is MaxUpstreamBodyMemory.
	bodyMemory int64
	// premadeQueue turns pre-made variants on (proxy.Options.PremadeQueue),
	// their work running beside the server.
	premadeQueue int
	// premadeByTest: the test runs the server's RunPremade itself, on a
	// context it ends.
	premadeByTest bool
	// webhook turns the admission webhook on (its pins go to the store),
	// served at harness.webhookURL.
	webhook *proxy.WebhookOptions
}

func newHarness(t testing.TB, o harnessOptions) *harness {
	t.Helper()
	reg := regtest.Start(t, o.registry)
	front := newFaultyFront(t, reg.URL)
	store, root := o.store, ""
	if store == nil {
		root = t.TempDir()
		store = cache.New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 50}))
	}
	h := &harness{reg: reg, front: front, store: store, root: root, opts: o}
	h.restart(t)
	return h
}

// restart replaces the proxy with a new one on the same cache, as a restart
// or another replica would be.
func (h *harness) restart(t testing.TB) {
	t.Helper()
	u, _ := url.Parse(h.front.URL)
	if h.opts.upstreamURL != "" {
		u, _ = url.Parse(h.opts.upstreamURL)
	}
	h.logs = &syncBuffer{}
	promReg := prometheus.NewRegistry()
	// regtest's token service listens on a port of its own: a realm on
	// another host inside the network, which its operator would allow.
	up := upstream.Config{Name: "docker.io", URL: u, Credentials: h.opts.credentials, ForwardCredentials: h.opts.forward}
	if h.opts.registry.TokenAuth {
		up.AllowRedirectsTo = allowList(t, "127.0.0.0/8")
	}
	if h.opts.upstream != nil {
		h.opts.upstream(&up)
	}
	token := testReportToken
	if h.opts.noReportToken {
		token = ""
	}
	b := buildServer(t, serverParts{harnessOptions: h.opts, store: h.store, upstreams: append([]upstream.Config{up}, h.opts.more...),
		spoolDir: t.TempDir(), reportToken: token, reg: promReg,
		log: slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	srv := b.srv
	ps := httptest.NewServer(srv.Handler(promhttp.HandlerFor(promReg, promhttp.HandlerOpts{})))
	t.Cleanup(ps.Close)
	// Downloads outlive the requests that start them: let them end before
	// the cache's directory is removed.
	t.Cleanup(func() { waitFor(t, "downloads to end", func() bool { return downloadsIdle(t, promReg) }) })
	h.srv, h.url, h.built = srv, ps.URL, b
	if wh := srv.WebhookHandler(); wh != nil {
		ws := httptest.NewServer(wh)
		t.Cleanup(ws.Close)
		h.webhookURL = ws.URL
		// Its pins are written beside the admissions: they end before the
		// cache's directory is removed.
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.RunWebhook(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	if h.opts.premadeQueue > 0 && !h.opts.premadeByTest {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.RunPremade(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	if h.opts.eviction != (cache.EvictionPolicy{}) && !h.opts.manualMaintenance {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { b.maintainer.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
}

// allowList is upstreams[].allowRedirectsTo's entries, parsed.
func allowList(t testing.TB, entries ...string) upstream.AllowList {
	t.Helper()
	l, err := upstream.ParseAllowList(entries)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testReportToken is the node report token of the harness.
const testReportToken = "node-report-token"

// reporter is node-config's client of h: it holds the report token.
func (h *harness) reporter() proxy.Client {
	return proxy.Client{Server: h.url, Token: testReportToken}
}

// push pushes a generated image and returns it.
func (h *harness) push(t testing.TB, repo, tag string, opts regtest.ImageOptions, layers ...[]regtest.File) regtest.Image {
	t.Helper()
	img, err := regtest.BuildImage(opts, layers...)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.reg.Client().PushImage(context.Background(), repo, tag, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func (h *harness) pushBlob(t testing.TB, repo string, content []byte) digest.Digest {
	t.Helper()
	if err := h.reg.Client().PushBlob(context.Background(), repo, content); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(content)
}

// boundedClient turns a request that hangs (waiting on something it must
// not wait for) into a failure instead of a stuck test binary.
var boundedClient = &http.Client{Timeout: time.Minute}

type response struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body failed
}

func (h *harness) do(t testing.TB, method, path string, header http.Header) response {
	t.Helper()
	return h.doBody(t, method, path, header, "")
}

// doBody is do with a request body.
func (h *harness) doBody(t testing.TB, method, path string, header http.Header, reqBody string) response {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(reqBody))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := boundedClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}

// ociError decodes an OCI error body and returns its first code.
func (r response) ociError(t *testing.T) string {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("status %d: body is not an OCI error: %q", r.status, r.body)
	}
	return body.Errors[0].Code
}

// metric sums the samples of name from /metrics whose labels contain
// labels, a substring such as `kind="blob",result="hit"`. A metric that is
// not exported, or no series matching labels, fails the test: a renamed
// metric must not read as 0.
func (h *harness) metric(t testing.TB, name, labels string) float64 {
	t.Helper()
	return metricAt(t, h.url, name, labels)
}

// metricAt is harness.metric, of the server at base.
func metricAt(t testing.TB, base, name, labels string) float64 {
	t.Helper()
	resp, err := boundedClient.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r response
	if r.body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:\{([^}]*)\})? (\S+)$`)
	total, matched := 0.0, 0
	for _, m := range re.FindAllStringSubmatch(string(r.body), -1) {
		if strings.Contains(m[1], labels) {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatalf("metric %s{%s}: %v", name, m[1], err)
			}
			total += v
			matched++
		}
	}
	if matched == 0 {
		t.Fatalf("metric %s{%s} is not exported", name, labels)
	}
	return total
}

// downloadsIdle reports whether no download runs or waits.
func downloadsIdle(t testing.TB, g prometheus.Gatherer) bool {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, f := range families {
		switch f.GetName() {
		case "regnorm_upstream_inflight_fetches", "regnorm_upstream_queued_fetches":
			found++
			if f.GetMetric()[0].GetGauge().GetValue() != 0 {
				return false
			}
		}
	}
	if found != 2 {
		t.Fatalf("download gauges not exported (%d of 2 found)", found)
	}
	return true
}

// waitFor polls cond until it holds, and fails the test if it does not
// within a minute: a bound on liveness, never a verdict on speed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeClock is a clock the test moves: After and AfterFunc fire when
// Advance passes their time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	next    int
	waiters map[int]fakeWaiter
}

type fakeWaiter struct {
	at   time.Time
	fire func(time.Time)
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now(), waiters: map[int]fakeWaiter{}} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) add(d time.Duration, fire func(time.Time)) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next++
	c.waiters[c.next] = fakeWaiter{at: c.now.Add(d), fire: fire}
	return c.next
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.add(d, func(t time.Time) { ch <- t })
	return ch
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	id := c.add(d, func(time.Time) { go f() })
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, pending := c.waiters[id]
		delete(c.waiters, id)
		return pending
	}
}

// Waiting is how many timers have not fired.
func (c *fakeClock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// Advance moves the clock by d and fires what is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for id, w := range c.waiters {
		if !w.at.After(c.now) {
			delete(c.waiters, id)
			w.fire(c.now)
		}
	}
}

// faultyFront relays to the registry unless a fault is set; blob requests
// can be slowed down.
type faultyFront struct {
	URL       string
	relay     http.HandlerFunc // to the registry, for faults that pick their requests
	mu        sync.Mutex
	fault     http.HandlerFunc
	hits      int
	blobDelay time.Duration
}

func newFaultyFront(t testing.TB, target string) *faultyFront {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	f := &faultyFront{relay: rp.ServeHTTP}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		fault, delay := f.fault, f.blobDelay
		f.hits++
		f.mu.Unlock()
		if strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(delay)
		}
		if fault != nil {
			fault(w, r)
			return
		}
		f.relay(w, r)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

func (f *faultyFront) set(h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = h
}

func (f *faultyFront) slowBlobs(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobDelay = d
}

func (f *faultyFront) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var containerdAccept = http.Header{"Accept": {"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"}}
