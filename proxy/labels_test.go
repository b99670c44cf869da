package proxy_test

import (
	"crypto/sha256"
	"fmt"
	"maps"
	"net"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/label"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestClientsCannotChooseLabelValues: 400 requests with made-up methods,
// with client auth and protectMetrics on (they are refused before any
// handler) and without, give no series a made-up method; the series they
// add are one "other" per route and code at most, and 400 more with other
// made-up methods add none.
func TestClientsCannotChooseLabelValues(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		auth   *proxy.ClientAuth
		scrape http.Header
	}{
		{"client auth and protectMetrics on", &proxy.ClientAuth{
			Tokens:         [][sha256.Size]byte{sha256.Sum256([]byte("robot-token"))},
			ProtectMetrics: true,
			ProtectReport:  true,
		}, bearer("robot-token")},
		{"no client auth", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{clientAuth: tt.auth})
			img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
			paths := []string{"/v2/", "/v2/library/app/manifests/v1", "/v2/library/app/blobs/" + digest.FromBytes(img.Layers[0]).String(),
				"/v2/library/app/tags/list", "/v2/library/app/blobs/uploads/", "/metrics", "/status", "/api/v1/rewrites",
				"/api/v1/warm", "/api/v1/nodes", "/healthz", "/readyz", "/no/such/endpoint", "/v2/Bad/manifests/v1"}
			madeUp := func(round int) {
				t.Helper()
				for i := range 400 {
					h.do(t, fmt.Sprintf("MADEUP%d-%03d", round, i), paths[i%len(paths)], nil)
				}
			}
			scrapeSeries(t, h, tt.scrape) // the scrape's own series
			before := scrapeSeries(t, h, tt.scrape)
			madeUp(1)
			after := scrapeSeries(t, h, tt.scrape)
			added := 0
			for s := range after {
				if strings.Contains(s, "MADEUP") {
					t.Fatalf("a client chose a label value: %s", s)
				}
				if !before[s] {
					added++
					if !strings.Contains(s, `method="other"`) {
						t.Errorf("new series %s", s)
					}
				}
			}
			if added > len(paths) {
				t.Errorf("%d series added by made-up methods on %d paths", added, len(paths))
			}
			madeUp(2)
			for s := range scrapeSeries(t, h, tt.scrape) {
				if !after[s] {
					t.Errorf("more made-up methods added %s", s)
				}
			}
		})
	}
}

// TestUpstreamsCannotChooseLabelValues: an upstream that answers every
// status code from 400 to 999 gives no label a value outside label's fixed
// sets, and one answering 700 to 999 after 400 to 699 adds no series.
func TestUpstreamsCannotChooseLabelValues(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{retry: upstream.RetryPolicy{Attempts: 1}})
	// The tag names the status: /v2/library/app/manifests/s777 is answered
	// 777.
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(path.Base(r.URL.Path), "s"))
		if err != nil {
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
	})
	pull := func(from, to int) {
		t.Helper()
		for code := from; code <= to; code++ {
			if r := h.do(t, http.MethodGet, fmt.Sprintf("/v2/library/app/manifests/s%d", code), containerdAccept); r.status < 400 {
				t.Fatalf("upstream answered %d: regnorm answered %d", code, r.status)
			}
		}
	}
	scrapeSeries(t, h, nil) // the scrape's own series
	pull(400, 699)
	after := scrapeSeries(t, h, nil)
	// The labels that take a status code, by family.
	allowed := map[string]map[string][]string{
		"regnorm_http_requests_total":     {"code": label.Statuses()},
		"regnorm_upstream_requests_total": {"result": append(label.Statuses(), "error")},
		"regnorm_upstream_retries_total":  {"reason": append(label.Statuses(), "unreachable", "stalled", "truncated")},
	}
	labelRE := regexp.MustCompile(`(\w+)="([^"]*)"`)
	for s := range after {
		family, _, _ := strings.Cut(s, "{")
		for _, m := range labelRE.FindAllStringSubmatch(s, -1) {
			if values, ok := allowed[family][m[1]]; ok && !slices.Contains(values, m[2]) {
				t.Errorf("an upstream chose a label value: %s", s)
			}
		}
	}
	pull(700, 999)
	for s := range scrapeSeries(t, h, nil) {
		if !after[s] {
			t.Errorf("more upstream status codes added %s", s)
		}
	}
}

// scrapeSeries is the set of series /metrics exports: each sample's name
// and labels.
func scrapeSeries(t *testing.T, h *harness, header http.Header) map[string]bool {
	t.Helper()
	r := h.do(t, http.MethodGet, "/metrics", header)
	if r.status != http.StatusOK {
		t.Fatalf("/metrics: %d", r.status)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(r.body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The value is after the last space: label values may hold spaces.
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("/metrics line %q", line)
		}
		out[line[:i]] = true
	}
	if len(out) == 0 {
		t.Fatal("/metrics exports no series")
	}
	return out
}

// TestNodesCannotChooseLabelValues: nodes pulling with made-up containerd
// versions, each from an address of its own, add no regnorm_nodes series:
// its series are the minor versions ruleset knows, other and unknown,
// from the first scrape on, and the made-up versions count as other.
func TestNodesCannotChooseLabelValues(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	want := map[string]bool{}
	for _, v := range append(ruleset.Minors(), label.Other, "unknown") {
		want[`regnorm_nodes{containerd="`+v+`"}`] = true
	}
	nodeSeries := func() map[string]bool {
		t.Helper()
		got := map[string]bool{}
		for s := range scrapeSeries(t, h, nil) {
			if strings.HasPrefix(s, "regnorm_nodes{") {
				got[s] = true
			}
		}
		return got
	}
	if got := nodeSeries(); !maps.Equal(got, want) {
		t.Fatalf("regnorm_nodes on the first scrape: %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	// 30 nodes (127.0.0.2 to 127.0.0.31) with made-up versions, and one
	// (127.0.0.1) with a real one.
	for i := range 30 {
		node := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: (&net.Dialer{
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}}).DialContext}}
		req, _ := http.NewRequest(http.MethodHead, h.url+"/v2/library/app/manifests/v1", nil)
		req.Header = containerdAccept.Clone()
		req.Header.Set("User-Agent", fmt.Sprintf("containerd/%d.%d.0", 3+i, 31337+i))
		resp, err := node.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		node.CloseIdleConnections()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("node %d: %d", i, resp.StatusCode)
		}
	}
	ua := containerdAccept.Clone()
	ua.Set("User-Agent", "containerd/1.6.20")
	if r := h.do(t, http.MethodHead, "/v2/library/app/manifests/v1", ua); r.status != http.StatusOK {
		t.Fatalf("the real node: %d", r.status)
	}
	if n := len(h.nodes(t)); n != 31 {
		t.Fatalf("%d nodes in the fleet view, want 31", n)
	}
	h.built.fleet.Count()
	if got := nodeSeries(); !maps.Equal(got, want) {
		t.Fatalf("regnorm_nodes after made-up versions: %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	if other, real := h.metric(t, "regnorm_nodes", `containerd="other"`), h.metric(t, "regnorm_nodes", `containerd="1.6"`); other != 30 || real != 1 {
		t.Fatalf("regnorm_nodes: other %v, 1.6 %v; want 30, 1", other, real)
	}
}
