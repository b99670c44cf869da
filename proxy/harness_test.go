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
)

// harness is a proxy in front of a real registry, with a fault-injecting
// front between them.
type harness struct {
	reg   *regtest.Registry
	front *faultyFront
	store *cache.Store
	url   string
	srv   *proxy.Server
	logs  *syncBuffer
	opts  harnessOptions
}

type harnessOptions struct {
	registry     regtest.Options
	credentials  proxy.Credentials
	tagTTL       time.Duration
	rules        *proxy.Rules
	deadline     time.Duration
	patient      time.Duration
	eviction     cache.EvictionPolicy
	stall        time.Duration
	maxLayerSize int64
	clientAuth   *proxy.ClientAuth
	forward      bool
	retry        proxy.RetryPolicy
	// upstreamURL replaces the fault front as the upstream (an address
	// nothing listens on, for instance).
	upstreamURL string
}

func newHarness(t testing.TB, o harnessOptions) *harness {
	t.Helper()
	reg := regtest.Start(t, o.registry)
	front := newFaultyFront(t, reg.URL)
	store := cache.New(filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 50}))
	h := &harness{reg: reg, front: front, store: store, opts: o}
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
	srv, err := proxy.New(proxy.Options{
		Store:           h.store,
		Upstreams:       []proxy.UpstreamConfig{{Name: "docker.io", URL: u, Credentials: h.opts.credentials, ForwardCredentials: h.opts.forward}},
		ClientAuth:      h.opts.clientAuth,
		DefaultUpstream: "docker.io",
		TagTTL:          h.opts.tagTTL,
		Rules:           h.opts.rules,
		Deadline:        h.opts.deadline,
		PatientDeadline: h.opts.patient,
		Eviction:        h.opts.eviction,
		StallTimeout:    h.opts.stall,
		MaxLayerSize:    h.opts.maxLayerSize,
		Retry:           h.opts.retry,
		SpoolDir:        t.TempDir(),
		Metrics:         proxy.NewMetrics(promReg),
		Logger:          slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(srv.Handler(promhttp.HandlerFor(promReg, promhttp.HandlerOpts{})))
	t.Cleanup(ps.Close)
	h.srv, h.url = srv, ps.URL
	if h.opts.eviction != (cache.EvictionPolicy{}) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
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

type response struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body failed
}

func (h *harness) do(t testing.TB, method, path string, header http.Header) response {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
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

// metric reads one sample from /metrics; labels is a substring such as
// `kind="blob",result="hit"`.
func (h *harness) metric(t testing.TB, name, labels string) float64 {
	t.Helper()
	r := h.do(t, http.MethodGet, "/metrics", nil)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:\{([^}]*)\})? (\S+)$`)
	total := 0.0
	for _, m := range re.FindAllStringSubmatch(string(r.body), -1) {
		if strings.Contains(m[1], labels) {
			v, _ := strconv.ParseFloat(m[2], 64)
			total += v
		}
	}
	return total
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
