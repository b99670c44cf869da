package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// stallFor is the stall timeout of a fault case: short where the stall
// guard is what the case tests, and otherwise so long that a busy machine
// (the race detector, every test at once) never trips it.
func stallFor(name string) time.Duration {
	if strings.Contains(name, "stall") {
		return 300 * time.Millisecond
	}
	return time.Minute
}

// fastRetries keeps fault tests quick: the same policy, shorter waits.
var fastRetries = upstream.RetryPolicy{Attempts: 3, Backoff: 20 * time.Millisecond, MaxWait: 2 * time.Second}

// firstN applies fault to the first n requests whose path contains match,
// and relays the rest to the registry. It counts the requests it saw.
func firstN(f *faultyFront, n int, match string, fault http.HandlerFunc) *atomic.Int64 {
	var seen atomic.Int64
	f.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, match) && seen.Add(1) <= int64(n) {
			fault(w, r)
			return
		}
		f.relay(w, r)
	})
	return &seen
}

// cutOff sends the headers of a blob (or of the range asked for) and half the
// body, then drops the connection.
func cutOff(content []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		writeHalf(w, r, content)
		panic(http.ErrAbortHandler)
	}
}

// stallAfterHalf sends half a blob (or of the range asked for) and then
// nothing until the client gives up.
func stallAfterHalf(content []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		writeHalf(w, r, content)
		<-r.Context().Done()
	}
}

// writeHalf answers a blob GET, ranged as a registry would, but sends only
// the first half of the body.
func writeHalf(w http.ResponseWriter, r *http.Request, content []byte) {
	var from int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(content)-1, len(content)))
		w.Header().Set("Content-Length", strconv.Itoa(len(content)-from))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
	}
	rest := content[from:]
	w.Write(rest[:len(rest)/2])
	w.(http.Flusher).Flush()
}

func status(code int, retryAfter string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, http.StatusText(code), code)
	}
}

// TestRecoversFromPassingFaults: a fault that passes costs the client
// nothing. Cut-off and stalled bodies resume with a range request; 5xx and a
// short 429 are retried after a wait.
func TestRecoversFromPassingFaults(t *testing.T) {
	t.Parallel()
	content := regtest.RandomBytes(1 << 20)
	dgst := digest.FromBytes(content)
	tests := []struct {
		name  string
		times int
		fault http.HandlerFunc
	}{
		{"reset mid-blob", 2, cutOff(content)},
		{"stall mid-blob", 1, stallAfterHalf(content)},
		{"500", 2, status(http.StatusInternalServerError, "")},
		{"502", 1, status(http.StatusBadGateway, "")},
		{"503", 1, status(http.StatusServiceUnavailable, "")},
		{"429 with Retry-After 1", 1, status(http.StatusTooManyRequests, "1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{stall: stallFor(tt.name), retry: fastRetries})
			h.pushBlob(t, "library/x", content)
			seen := firstN(h.front, tt.times, "/blobs/", tt.fault)

			r := h.do(t, http.MethodGet, "/v2/library/x/blobs/"+dgst.String(), nil)
			if r.status != http.StatusOK || r.err != nil || !bytes.Equal(r.body, content) {
				t.Fatalf("got %d (%d bytes, %v), want the blob", r.status, len(r.body), r.err)
			}
			if got, want := seen.Load(), int64(tt.times+1); got != want {
				t.Errorf("upstream saw %d blob requests, want %d", got, want)
			}
			if got := h.metric(t, "regnorm_upstream_retries_total", ""); got != float64(tt.times) {
				t.Errorf("regnorm_upstream_retries_total = %v, want %d", got, tt.times)
			}
			assertCachedVerifies(t, h.store, dgst)
		})
	}
}

// TestLastingFaults: a fault that lasts gives the client a clear error within
// a bounded time, after a bounded number of attempts, and leaves nothing in
// the cache.
func TestLastingFaults(t *testing.T) {
	t.Parallel()
	// Larger than a manifest can be: sent as it comes (a smaller blob is
	// read whole before its headers, TestUpstreamFaults).
	content := regtest.RandomBytes(mediatype.MaxManifestSize + 1<<20)
	dgst := digest.FromBytes(content)
	blobPath := "/v2/library/x/blobs/" + dgst.String()
	tests := []struct {
		name         string
		fault        http.HandlerFunc
		path         string
		wantStatus   int // 0: headers are sent, then the body is cut short
		wantCode     string
		wantAttempts int64
		wantRetryHdr string
	}{
		{"500", status(http.StatusInternalServerError, ""), blobPath, http.StatusBadGateway, errcode.Unavailable, 3, ""},
		{"503 with a long Retry-After", status(http.StatusServiceUnavailable, "120"), blobPath, http.StatusServiceUnavailable, errcode.Unavailable, 1, "120"},
		{"429 with a long Retry-After", status(http.StatusTooManyRequests, "60"), blobPath, http.StatusTooManyRequests, errcode.TooManyRequests, 1, "60"},
		{"reset mid-blob", cutOff(content), blobPath, 0, "", 3, ""},
		{"stall mid-blob", stallAfterHalf(content), blobPath, 0, "", 3, ""},
		{"stall before headers", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, "/v2/library/x/manifests/v1", http.StatusBadGateway, errcode.Unavailable, 3, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{stall: stallFor(tt.name), retry: fastRetries})
			h.pushBlob(t, "library/x", content)
			seen := firstN(h.front, 1000, "/v2/library/x/", tt.fault)

			r := h.do(t, http.MethodGet, tt.path, nil)
			if tt.wantStatus == 0 {
				if r.err == nil {
					t.Fatalf("client read %d bytes without error; want a short read", len(r.body))
				}
			} else {
				if r.status != tt.wantStatus || r.ociError(t) != tt.wantCode {
					t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantCode)
				}
				if got := r.header.Get("Retry-After"); got != tt.wantRetryHdr {
					t.Errorf("Retry-After = %q, want %q", got, tt.wantRetryHdr)
				}
			}
			waitNoFetches(t, h)
			if got := seen.Load(); got != tt.wantAttempts {
				t.Errorf("upstream saw %d requests, want %d", got, tt.wantAttempts)
			}
			if _, err := h.store.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("cache after fault: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestUnreachableUpstream: nothing listens where the upstream should be.
func TestUnreachableUpstream(t *testing.T) {
	t.Parallel()
	addr := closedAddr(t)
	h := newHarness(t, harnessOptions{upstreamURL: "http://" + addr, retry: fastRetries})

	r := h.do(t, http.MethodGet, "/v2/library/x/manifests/v1", containerdAccept)
	if r.status != http.StatusBadGateway || r.ociError(t) != errcode.Unavailable {
		t.Fatalf("got %d %s, want 502 UNAVAILABLE", r.status, r.body)
	}
	if strings.Contains(string(r.body), addr) {
		t.Errorf("error names the upstream address: %s", r.body)
	}
	// An upstream's failure is a warning in the access log, not news.
	warned := false
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, `"status":502`) {
			warned = strings.Contains(line, `"level":"WARN"`)
		}
	}
	if !warned {
		t.Errorf("the 502's access line is not a warning:\n%s", h.logs.String())
	}
	if got := h.metric(t, "regnorm_upstream_requests_total", `result="error"`); got != 3 {
		t.Errorf("%v attempts, want 3", got)
	}
}

// TestTokenServiceFaults: a failing token service is a gateway error; one
// that refuses the credentials is the client's 401.
func TestTokenServiceFaults(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		tokenStatus int
		wantStatus  int
		wantCode    string
	}{
		{http.StatusInternalServerError, http.StatusBadGateway, errcode.Unavailable},
		{http.StatusUnauthorized, http.StatusUnauthorized, errcode.Unauthorized},
	} {
		t.Run(strconv.Itoa(tt.tokenStatus), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{
				registry:    regtest.Options{TokenAuth: true, Username: "u", Password: "p"},
				credentials: upstream.Credentials{Username: "u", Password: "p"},
				retry:       fastRetries,
			})
			h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
			h.reg.TokenFailure.Store(int32(tt.tokenStatus))
			before := h.reg.TokenRequests.Load()
			r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
			if r.status != tt.wantStatus || r.ociError(t) != tt.wantCode {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantCode)
			}
			if got := h.reg.TokenRequests.Load() - before; got < 1 || got > 3 {
				t.Errorf("%d token requests, want 1 to 3", got)
			}
			// The service recovers, and so does the proxy.
			h.reg.TokenFailure.Store(0)
			if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept); r.status != http.StatusOK {
				t.Fatalf("after recovery: %d %s", r.status, r.body)
			}
		})
	}
}

// assertCachedVerifies reads dgst from the cache, which must hold it, and
// checks its digest: the cache never holds a wrong byte.
func assertCachedVerifies(t *testing.T, store *cache.Store, dgst digest.Digest) {
	t.Helper()
	rc, _, err := store.OpenBlob(context.Background(), dgst, 0)
	if err != nil {
		t.Fatalf("cached blob %s: %v", dgst, err)
	}
	defer rc.Close()
	v := dgst.Verifier()
	if _, err := io.Copy(v, rc); err != nil {
		t.Fatal(err)
	}
	if !v.Verified() {
		t.Fatalf("cache holds wrong bytes under %s", dgst)
	}
}

// waitNoFetches waits until no download runs or waits, and fails the test
// if one never ends.
func waitNoFetches(t *testing.T, h *harness) {
	t.Helper()
	waitFor(t, "downloads to end", func() bool {
		return h.metric(t, "regnorm_upstream_inflight_fetches", "") == 0 && h.metric(t, "regnorm_upstream_queued_fetches", "") == 0
	})
}

// TestRateLimitBudget: an upstream's RateLimit-Limit and RateLimit-Remaining
// (Docker Hub's pull budget) become gauges; until it sends them, they are
// unknown (NaN), never a 0 that reads as an exhausted budget.
func TestRateLimitBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	if got := h.metric(t, "regnorm_upstream_ratelimit_remaining", `upstream="docker.io"`); !math.IsNaN(got) {
		t.Fatalf("before any answer: %v, want NaN", got)
	}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("RateLimit-Limit", "100;w=21600")
		w.Header().Set("RateLimit-Remaining", "76;w=21600")
		h.front.relay(w, r)
	})
	if r := h.do(t, http.MethodHead, "/v2/library/app/manifests/v1", containerdAccept); r.status != http.StatusOK {
		t.Fatalf("HEAD: %d", r.status)
	}
	for name, want := range map[string]float64{"regnorm_upstream_ratelimit_limit": 100, "regnorm_upstream_ratelimit_remaining": 76,
		"regnorm_upstream_ratelimit_window_seconds": 21600} {
		if got := h.metric(t, name, `upstream="docker.io"`); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// closedAddr is a 127.0.0.1 address nothing listens on: an upstream that
// refuses connections.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
