package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

var oneFile = []regtest.File{{Name: "hello.txt", Content: []byte("hello from regnorm\n")}}

// TestPullLikeContainerd makes containerd's requests (docs/containerd.md)
// and checks every header it relies on, then that a second pull never reaches
// upstream.
func TestPullLikeContainerd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile, []regtest.File{{Name: "b", Content: regtest.RandomBytes(300 << 10)}})

	base := h.do(t, http.MethodGet, "/v2/", nil)
	if base.status != http.StatusOK || base.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v", base.status, base.header)
	}

	pull := func() {
		head := h.do(t, http.MethodHead, "/v2/library/app/manifests/v1?ns=docker.io", containerdAccept)
		if head.status != http.StatusOK || len(head.body) != 0 {
			t.Fatalf("HEAD manifest: %d, %d body bytes", head.status, len(head.body))
		}
		if got := head.header.Get("Docker-Content-Digest"); got != img.ManifestDigest.String() {
			t.Fatalf("HEAD Docker-Content-Digest = %q, want %s", got, img.ManifestDigest)
		}
		if got := head.header.Get("Content-Length"); got != strconv.Itoa(len(img.Manifest)) {
			t.Fatalf("HEAD Content-Length = %s, want %d", got, len(img.Manifest))
		}
		if got := head.header.Get("Content-Type"); got != regtest.MediaTypeDockerManifest {
			t.Fatalf("HEAD Content-Type = %s", got)
		}
		if got := head.header.Get("ETag"); got != `"`+img.ManifestDigest.String()+`"` {
			t.Fatalf("HEAD ETag = %s", got)
		}
		get := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+img.ManifestDigest.String()+"?ns=docker.io", http.Header{"Accept": {regtest.MediaTypeDockerManifest + ", */*"}})
		if get.status != http.StatusOK || !bytes.Equal(get.body, img.Manifest) {
			t.Fatalf("GET manifest by digest: %d, body equal: %v", get.status, bytes.Equal(get.body, img.Manifest))
		}
		for _, blob := range append([][]byte{img.Config}, img.Layers...) {
			dgst := digest.FromBytes(blob)
			r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+dgst.String()+"?ns=docker.io", nil)
			if r.status != http.StatusOK || r.err != nil || !bytes.Equal(r.body, blob) {
				t.Fatalf("GET blob %s: %d %v, equal %v", dgst, r.status, r.err, bytes.Equal(r.body, blob))
			}
			if r.header.Get("Docker-Content-Digest") != dgst.String() {
				t.Fatalf("blob Docker-Content-Digest = %q", r.header.Get("Docker-Content-Digest"))
			}
		}
	}
	pull()
	upstreamBefore := h.front.count()
	hitsBefore := h.metric(t, "regnorm_cache_requests_total", `kind="blob",result="hit"`)
	pull()
	if got := h.front.count(); got != upstreamBefore {
		t.Fatalf("warm pull sent %d requests upstream, want 0", got-upstreamBefore)
	}
	if hits := h.metric(t, "regnorm_cache_requests_total", `kind="blob",result="hit"`) - hitsBefore; hits != 3 {
		t.Fatalf("warm pull blob cache hits = %v, want 3", hits)
	}
	if got := h.metric(t, "regnorm_served_bytes_total", `source="cache"`); got == 0 {
		t.Fatal("no bytes counted as served from cache")
	}
}

func TestNoNSUsesDefaultUpstream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept)
	if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
		t.Fatalf("GET without ns: %d", r.status)
	}
}

func TestTokenAuthUpstream(t *testing.T) {
	t.Parallel()
	regOpts := regtest.Options{TokenAuth: true, Username: "puller", Password: "s3cret-pass"}

	t.Run("credentials", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{registry: regOpts, credentials: upstream.Credentials{Username: "puller", Password: "s3cret-pass"}})
		img := h.push(t, "team/app", "v1", regtest.ImageOptions{}, oneFile, oneFile[:0])
		if r := h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", containerdAccept); r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
			t.Fatalf("manifest through token auth: %d %s", r.status, r.body)
		}
		for _, blob := range append([][]byte{img.Config}, img.Layers...) {
			if r := h.do(t, http.MethodGet, "/v2/team/app/blobs/"+digest.FromBytes(blob).String(), nil); r.status != http.StatusOK || !bytes.Equal(r.body, blob) {
				t.Fatalf("blob through token auth: %d", r.status)
			}
		}
		if got := h.reg.TokenRequests.Load(); got != 1 {
			t.Fatalf("token requests = %d, want 1 (the token is reused until it expires)", got)
		}
		if bytes.Contains([]byte(h.logs.String()), []byte("s3cret-pass")) {
			t.Fatal("the upstream password appears in the log")
		}
	})
	t.Run("wrong credentials", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{registry: regOpts, credentials: upstream.Credentials{Username: "puller", Password: "wrong"}})
		h.push(t, "team/app", "v1", regtest.ImageOptions{}, oneFile)
		r := h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", containerdAccept)
		if r.status != http.StatusUnauthorized || r.ociError(t) != errcode.Unauthorized {
			t.Fatalf("got %d %s, want 401 UNAUTHORIZED", r.status, r.body)
		}
	})
	t.Run("token expiry", func(t *testing.T) {
		t.Parallel()
		short := regOpts
		short.TokenLifetime = time.Second // renewed early: every request needs a new token
		clk := newFakeClock()
		h := newHarness(t, harnessOptions{clock: clk, registry: short, credentials: upstream.Credentials{Username: "puller", Password: "s3cret-pass"}})
		h.push(t, "team/app", "v1", regtest.ImageOptions{}, oneFile)
		for i := range 2 {
			if r := h.do(t, http.MethodHead, "/v2/team/app/manifests/v1", containerdAccept); r.status != http.StatusOK {
				t.Fatalf("HEAD %d: %d", i, r.status)
			}
			clk.Advance(1100 * time.Millisecond)
		}
		if got := h.reg.TokenRequests.Load(); got < 2 {
			t.Fatalf("token requests = %d, want a new token after expiry", got)
		}
	})
}

func TestBasicAuthUpstream(t *testing.T) {
	t.Parallel()
	regOpts := regtest.Options{BasicAuth: true, Username: "puller", Password: "basic-pass"}
	for _, tt := range []struct {
		name       string
		creds      upstream.Credentials
		wantStatus int
	}{
		{"credentials", upstream.Credentials{Username: "puller", Password: "basic-pass"}, http.StatusOK},
		{"no credentials", upstream.Credentials{}, http.StatusUnauthorized},
		{"wrong password", upstream.Credentials{Username: "puller", Password: "nope"}, http.StatusUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{registry: regOpts, credentials: tt.creds})
			img := h.push(t, "team/app", "v1", regtest.ImageOptions{}, oneFile)
			r := h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", containerdAccept)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", r.status, tt.wantStatus, r.body)
			}
			if tt.wantStatus == http.StatusOK && !bytes.Equal(r.body, img.Manifest) {
				t.Fatal("wrong manifest")
			}
			if tt.wantStatus != http.StatusOK && r.ociError(t) != errcode.Unauthorized {
				t.Fatalf("code %s", r.ociError(t))
			}
		})
	}
}

// TestConcurrentColdBlob: 50 clients, one upstream GET, 50 correct bodies.
func TestConcurrentColdBlob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	content := regtest.RandomBytes(8 << 20)
	dgst := h.pushBlob(t, "library/big", content)
	before := h.reg.Requests(http.MethodGet, "blobs")

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			r := h.do(t, http.MethodGet, "/v2/library/big/blobs/"+dgst.String(), nil)
			switch {
			case r.err != nil:
				errs <- r.err
			case r.status != http.StatusOK:
				errs <- fmt.Errorf("status %d", r.status)
			case !bytes.Equal(r.body, content):
				errs <- errors.New("wrong body")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := h.reg.Requests(http.MethodGet, "blobs") - before; got != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", got)
	}
}

func TestRanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	content := regtest.RandomBytes(1 << 20)
	dgst := h.pushBlob(t, "library/r", content)
	path := "/v2/library/r/blobs/" + dgst.String()

	for _, state := range []string{"cold", "cached"} {
		r := h.do(t, http.MethodGet, path, http.Header{"Range": {"bytes=1000-1999"}})
		if r.status != http.StatusPartialContent || !bytes.Equal(r.body, content[1000:2000]) {
			t.Fatalf("%s range: %d, %d bytes", state, r.status, len(r.body))
		}
		if got := r.header.Get("Content-Range"); got != fmt.Sprintf("bytes 1000-1999/%d", len(content)) {
			t.Fatalf("%s Content-Range = %q", state, got)
		}
		if r := h.do(t, http.MethodGet, path, http.Header{"Range": {"bytes=9999999-"}}); r.status != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("%s unsatisfiable range: %d", state, r.status)
		}
	}
	head := h.do(t, http.MethodHead, path, nil)
	if head.status != http.StatusOK || head.header.Get("Content-Length") != strconv.Itoa(len(content)) || len(head.body) != 0 {
		t.Fatalf("HEAD blob: %d %v", head.status, head.header)
	}
}

// TestUpstreamFaults: a broken upstream gives the client an error and leaves
// nothing in the cache. A blob larger than a manifest can be is sent as it
// comes, so its error is a short body; a smaller one is read whole before
// its headers (to be typed), so its error is a 502.
func TestUpstreamFaults(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2 << 20, mediatype.MaxManifestSize + 1<<20} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			t.Parallel()
			testUpstreamFaults(t, regtest.RandomBytes(size), size > mediatype.MaxManifestSize)
		})
	}
}

func testUpstreamFaults(t *testing.T, content []byte, streamed bool) {
	dgst := digest.FromBytes(content)
	broken := http.StatusBadGateway
	if streamed {
		broken = 0
	}
	tests := []struct {
		name       string
		fault      http.HandlerFunc
		wantStatus int // 0: headers are sent, the body is cut short
	}{
		{"truncated", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.WriteHeader(http.StatusOK)
			w.Write(content[:len(content)/2])
		}, broken},
		{"wrong bytes", func(w http.ResponseWriter, r *http.Request) {
			bad := bytes.Clone(content)
			bad[len(bad)-1] ^= 0xff
			w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
			w.Write(bad)
		}, broken},
		{"500", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "boom", http.StatusInternalServerError)
		}, http.StatusBadGateway},
		{"503", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			h.front.set(tt.fault)
			r := h.do(t, http.MethodGet, "/v2/library/x/blobs/"+dgst.String(), nil)
			if tt.wantStatus == 0 {
				if r.err == nil && bytes.Equal(r.body, content) {
					t.Fatal("client got a complete, correct-looking body from a broken upstream")
				}
				if r.err == nil {
					t.Fatalf("client read %d bytes without error; want a short read", len(r.body))
				}
			} else if r.status != tt.wantStatus || r.ociError(t) != errcode.Unavailable {
				t.Fatalf("got %d %s, want %d UNAVAILABLE", r.status, r.body, tt.wantStatus)
			}
			// The download finishes in the background; wait for it.
			waitNoFetches(t, h)
			if _, err := h.store.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("cache after fault: %v, want ErrNotFound", err)
			}
			// A healthy upstream afterwards serves the right bytes.
			h.front.set(func(w http.ResponseWriter, r *http.Request) { w.Write(content) })
			if r := h.do(t, http.MethodGet, "/v2/library/x/blobs/"+dgst.String(), nil); r.status != http.StatusOK || !bytes.Equal(r.body, content) {
				t.Fatalf("after recovery: %d", r.status)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	missing := digest.FromString("missing").String()
	tests := []struct {
		name, method, path string
		fault              http.HandlerFunc
		wantStatus         int
		wantCode           string
		wantMessage        string
		wantRetryAfter     string
	}{
		{name: "upper case name", method: "GET", path: "/v2/Library/app/manifests/v1", wantStatus: 400, wantCode: errcode.NameInvalid, wantMessage: "lower case"},
		{name: "upper case name, tags", method: "GET", path: "/v2/Library/app/tags/list", wantStatus: 400, wantCode: errcode.NameInvalid, wantMessage: "lower case"},
		{name: "empty component", method: "GET", path: "/v2/library//app/manifests/v1", wantStatus: 400, wantCode: errcode.NameInvalid, wantMessage: "empty component"},
		{name: "encoded slash", method: "GET", path: "/v2/library%2Fapp/manifests/v1", wantStatus: 400, wantCode: errcode.NameInvalid, wantMessage: "percent-encoded"},
		{name: "dot dot", method: "GET", path: "/v2/library/../app/manifests/v1", wantStatus: 400, wantCode: errcode.NameInvalid, wantMessage: "each component"},
		{name: "bad tag", method: "GET", path: "/v2/library/app/manifests/-v1!", wantStatus: 400, wantCode: errcode.TagInvalid, wantMessage: "is not a tag"},
		{name: "bad manifest digest", method: "GET", path: "/v2/library/app/manifests/sha256:xyz!", wantStatus: 400, wantCode: errcode.DigestInvalid},
		{name: "bad digest", method: "GET", path: "/v2/library/app/blobs/sha256:1234", wantStatus: 400, wantCode: errcode.DigestInvalid},
		{name: "catalog", method: "GET", path: "/v2/_catalog", wantStatus: 404, wantCode: errcode.Unsupported, wantMessage: "catalog"},
		{name: "referrers of an unknown subject", method: "GET", path: "/v2/library/app/referrers/" + missing, wantStatus: 404, wantCode: errcode.ManifestUnknown},
		{name: "bad referrers digest", method: "GET", path: "/v2/library/app/referrers/sha256:1234", wantStatus: 400, wantCode: errcode.DigestInvalid},
		{name: "referrers of no digest", method: "GET", path: "/v2/library/app/referrers/v1", wantStatus: 400, wantCode: errcode.DigestInvalid},
		{name: "unknown endpoint", method: "GET", path: "/v3/whatever", wantStatus: 404, wantCode: errcode.Unsupported},
		{name: "warm by GET", method: "GET", path: "/api/v1/warm", wantStatus: 405, wantCode: errcode.Unsupported, wantMessage: "use POST"},
		{name: "push", method: "PUT", path: "/v2/library/app/manifests/v1", wantStatus: 405, wantCode: errcode.Unsupported},
		{name: "delete", method: "DELETE", path: "/v2/library/app/blobs/" + missing, wantStatus: 405, wantCode: errcode.Unsupported},
		{name: "upload", method: "POST", path: "/v2/library/app/blobs/uploads/", wantStatus: 405, wantCode: errcode.Unsupported},
		{name: "unknown ns", method: "GET", path: "/v2/library/app/manifests/v1?ns=evil.example.com", wantStatus: 404, wantCode: errcode.NameUnknown},
		{name: "unknown tag", method: "GET", path: "/v2/library/app/manifests/nope", wantStatus: 404, wantCode: errcode.ManifestUnknown},
		{name: "unknown manifest digest", method: "GET", path: "/v2/library/app/manifests/" + missing, wantStatus: 404, wantCode: errcode.ManifestUnknown},
		{name: "unknown blob", method: "GET", path: "/v2/library/app/blobs/" + missing, wantStatus: 404, wantCode: errcode.BlobUnknown},
		{name: "forbidden", method: "GET", path: "/v2/library/other/manifests/v1", wantStatus: 403, wantCode: errcode.Denied,
			fault: func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }},
		{name: "oversized manifest", method: "GET", path: "/v2/library/other/manifests/v1", wantStatus: 502, wantCode: errcode.ManifestInvalid,
			fault: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", regtest.MediaTypeDockerManifest)
				w.Write(bytes.Repeat([]byte(" "), 4<<20+1))
			}},
		{name: "manifest that does not match its digest", method: "GET", path: "/v2/library/other/manifests/v1", wantStatus: 502, wantCode: errcode.ManifestInvalid,
			fault: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Docker-Content-Digest", missing)
				w.Write([]byte(`{"schemaVersion":2}`))
			}},
		// Last: the 429 holds the upstream's manifests for its Retry-After
		// (ratelimit_test.go), and the cases share one harness.
		{name: "rate limited", method: "GET", path: "/v2/library/other/manifests/v1", wantStatus: 429, wantCode: errcode.TooManyRequests, wantRetryAfter: "30",
			fault: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "30")
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, http.StatusTooManyRequests)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: some cases set the upstream fault.
			h.front.set(tt.fault)
			defer h.front.set(nil)
			before := h.front.count()
			r := h.do(t, tt.method, tt.path, containerdAccept)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d, want %d (%s)", r.status, tt.wantStatus, r.body)
			}
			if got := r.ociError(t); got != tt.wantCode {
				t.Fatalf("code %s, want %s", got, tt.wantCode)
			}
			if !strings.Contains(string(r.body), tt.wantMessage) {
				t.Fatalf("message %s does not say %q", r.body, tt.wantMessage)
			}
			if got := r.header.Get("Retry-After"); got != tt.wantRetryAfter {
				t.Fatalf("Retry-After %q, want %q", got, tt.wantRetryAfter)
			}
			if (tt.wantStatus == 400 || tt.wantStatus == 404) && tt.wantCode != errcode.ManifestUnknown && tt.wantCode != errcode.BlobUnknown && h.front.count() != before {
				t.Fatal("an invalid request reached upstream")
			}
		})
	}
}

// TestOversizedHeadersGetAnOCIError: headers over 64 KiB are refused with
// 431 and an OCI error body, as every other refusal.
func TestOversizedHeadersGetAnOCIError(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", http.Header{"X-Padding": {strings.Repeat("x", 62<<10)}})
	if r.status != http.StatusRequestHeaderFieldsTooLarge || r.ociError(t) != errcode.Unsupported || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("oversized headers: %d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	// The Host header counts too (net/http keeps it apart from the others).
	req, _ := http.NewRequest(http.MethodGet, h.url+"/healthz", nil)
	req.Host = strings.Repeat("h", 62<<10)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 62 KiB Host: %d", resp.StatusCode)
	}
}

func TestTagFreshness(t *testing.T) {
	t.Parallel()
	manifestPath := "/v2/library/app/manifests/v1"

	t.Run("within the TTL upstream is not asked", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{tagTTL: time.Hour})
		h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		h.do(t, http.MethodHead, manifestPath, containerdAccept)
		before := h.front.count()
		if r := h.do(t, http.MethodHead, manifestPath, containerdAccept); r.status != http.StatusOK {
			t.Fatal(r.status)
		}
		if h.front.count() != before {
			t.Fatal("a fresh tag went upstream")
		}
	})
	t.Run("after the TTL a HEAD revalidates and a moved tag is fetched", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{tagTTL: 0})
		first := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		h.do(t, http.MethodGet, manifestPath, containerdAccept)
		gets := h.reg.Requests(http.MethodGet, "manifests")
		r := h.do(t, http.MethodGet, manifestPath, containerdAccept)
		if r.header.Get("Docker-Content-Digest") != first.ManifestDigest.String() {
			t.Fatal("wrong digest")
		}
		if h.reg.Requests(http.MethodGet, "manifests") != gets || h.reg.Requests(http.MethodHead, "manifests") == 0 {
			t.Fatal("revalidation should be one HEAD and no GET")
		}
		second := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile, oneFile)
		r = h.do(t, http.MethodGet, manifestPath, containerdAccept)
		if r.header.Get("Docker-Content-Digest") != second.ManifestDigest.String() || !bytes.Equal(r.body, second.Manifest) {
			t.Fatal("a moved tag still serves the old manifest")
		}
	})
	t.Run("stale record served when upstream fails", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{tagTTL: 0})
		img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
		h.do(t, http.MethodGet, manifestPath, containerdAccept)
		h.front.set(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusBadGateway) })
		r := h.do(t, http.MethodGet, manifestPath, containerdAccept)
		if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
			t.Fatalf("stale serve: %d", r.status)
		}
		if got := h.metric(t, "regnorm_stale_serves_total", `upstream="docker.io"`); got != 1 {
			t.Fatalf("stale serves = %v, want 1", got)
		}
		if !bytes.Contains([]byte(h.logs.String()), []byte("serving stale tag")) {
			t.Fatal("stale serve not logged")
		}
		// A 404 from upstream is an answer, not an outage: no stale serve.
		h.front.set(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusNotFound) })
		if r := h.do(t, http.MethodGet, manifestPath, containerdAccept); r.status != http.StatusNotFound {
			t.Fatalf("tag deleted upstream: %d, want 404", r.status)
		}
	})
}

func TestTagsList(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, tag := range []string{"a", "b", "c"} {
		h.push(t, "library/app", tag, regtest.ImageOptions{}, oneFile)
	}
	r := h.do(t, http.MethodGet, "/v2/library/app/tags/list?n=2&ns=docker.io", nil)
	if r.status != http.StatusOK || string(bytes.TrimSpace(r.body)) != `{"name":"library/app","tags":["a","b"]}` {
		t.Fatalf("tags page 1: %d %s", r.status, r.body)
	}
	link := r.header.Get("Link")
	if !bytes.Contains([]byte(link), []byte("ns=docker.io")) {
		t.Fatalf("Link %q loses ns", link)
	}
	r = h.do(t, http.MethodGet, "/v2/library/app/tags/list?n=2&last=b", nil)
	if string(bytes.TrimSpace(r.body)) != `{"name":"library/app","tags":["c"]}` {
		t.Fatalf("tags page 2: %s", r.body)
	}
}

func TestAccessLogOneLinePerRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	h.do(t, http.MethodGet, "/v2/library/app/manifests/v1?ns=docker.io", containerdAccept)
	logs := h.logs.String()
	if n := bytes.Count([]byte(logs), []byte(`"msg":"request"`)); n != 1 {
		t.Fatalf("%d access lines, want 1:\n%s", n, logs)
	}
	for _, want := range []string{`"route":"manifest"`, `"repo":"library/app"`, `"ref":"v1"`, `"upstream":"docker.io"`, `"status":200`} {
		if !bytes.Contains([]byte(logs), []byte(want)) {
			t.Errorf("access line lacks %s:\n%s", want, logs)
		}
	}
}
