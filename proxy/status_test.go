package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/upstream"
)

func TestStatusPage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/redis", "2.8.23", legacy, oneFile)
	normalized, _ := h.pullByTag(t, "library/redis", "2.8.23")
	h.do(t, http.MethodGet, "/v2/library/redis/manifests/"+img.ManifestDigest.String(), containerdAccept)

	r := h.do(t, http.MethodGet, "/status", nil)
	page := html.UnescapeString(string(r.body)) // what a reader sees
	if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
		t.Fatalf("status page: %d %s", r.status, r.header.Get("Content-Type"))
	}
	for _, want := range []string{
		"docker.io/library/redis", "2.8.23", `data-value="` + normalized.String() + `"`, `data-value="` + img.ManifestDigest.String() + `"`,
		"config-media-type", "application/octet-stream → application/vnd.docker.container.image.v1+json",
		"Pulled by an original digest", "healthy", h.front.URL, // the endpoint, scheme and all
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if r := h.do(t, http.MethodGet, "/status?q=nomatch", nil); !strings.Contains(string(r.body), "No rewritten image matches") {
		t.Error("filter did not filter")
	}
	if r := h.do(t, http.MethodGet, "/", nil); r.status != http.StatusOK || !strings.Contains(string(r.body), "regnorm") {
		t.Errorf("/ does not lead to the status page: %d", r.status)
	}
}

// TestStatusPageWithAThousandEntries: the status page and the report's API
// list a thousand entries a page at a time, most recently served first:
// the entries, and the pulls that need re-pinning (all of them here).
func TestStatusPageWithAThousandEntries(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	now := time.Now()
	for i := range 1000 {
		e := cache.ReportEntry{Upstream: "docker.io", Repository: fmt.Sprintf("team/app%04d", i), Tags: []string{"v1"},
			Original: digest.FromString(fmt.Sprint("o", i)), Normalized: digest.FromString(fmt.Sprint("n", i)),
			Changes:    []cache.Change{{Kind: "symlink-xattrs", Path: "layers[0]"}},
			LastServed: now.Add(-time.Duration(i) * time.Minute), TimesServed: 1, UnnormalizedPulls: 1}
		if err := h.store.PutReport(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	page := string(h.do(t, http.MethodGet, "/status?page=2", nil).body)
	if n := strings.Count(page, `<tr class="entry">`); n != 50 {
		t.Fatalf("page 2 lists %d entries, want 50", n)
	}
	_, rewrites, _ := strings.Cut(page, `<section id="rewrites">`)
	if !strings.Contains(rewrites, "team/app0050") || strings.Contains(rewrites, "team/app0049<") || !strings.Contains(rewrites, "page 2 of 20") {
		t.Fatal("page 2 is not the second fifty, most recent first")
	}
	filtered := string(h.do(t, http.MethodGet, "/status?q=app0999", nil).body)
	if n := strings.Count(filtered, `<tr class="entry">`); n != 1 {
		t.Fatalf("filter found %d entries, want 1", n)
	}
	_, repin, _ := strings.Cut(page, `<section id="repin">`)
	repin, _, _ = strings.Cut(repin, "</section>")
	if n := strings.Count(repin, "<tr>") - 1; n != 50 || !strings.Contains(repin, "of 1000") {
		t.Fatalf("the pulls to re-pin list %d rows, want the first 50 of 1000", n)
	}

	for _, tt := range []struct {
		query      string
		page       int
		first      string
		wantListed int
	}{
		{"", 1, "team/app0000", 50},
		{"?page=2", 2, "team/app0050", 50},
		{"?page=20", 20, "team/app0950", 50},
		{"?page=99", 20, "team/app0950", 50},
	} {
		r := h.do(t, http.MethodGet, "/api/v1/rewrites"+tt.query, nil)
		var body struct {
			Rewrites           []cache.ReportEntry `json:"rewrites"`
			Total, Page, Pages int
		}
		if err := json.Unmarshal(r.body, &body); err != nil || r.status != http.StatusOK {
			t.Fatalf("/api/v1/rewrites%s: %d %v", tt.query, r.status, err)
		}
		if len(body.Rewrites) != tt.wantListed || body.Rewrites[0].Repository != tt.first || body.Total != 1000 || body.Page != tt.page || body.Pages != 20 {
			t.Errorf("/api/v1/rewrites%s: %d entries from %s, total %d, page %d of %d; want %d from %s, total 1000, page %d of 20",
				tt.query, len(body.Rewrites), body.Rewrites[0].Repository, body.Total, body.Page, body.Pages, tt.wantListed, tt.first, tt.page)
		}
	}
}

// TestUpstreamWordsStayOffTheStatusPage: what the status page says of an
// upstream's last failure is regnorm's own words and the status code, and
// an error a client gets carries none of the upstream's text: an upstream
// chooses its reason phrase and its auth scheme, up to a megabyte, and
// they would reach the operator as if regnorm said them.
func TestUpstreamWordsStayOffTheStatusPage(t *testing.T) {
	t.Parallel()
	phrase := "Service Unavailable: needs allowPrivateRedirects: true, see https://evil.example/fix " + strings.Repeat("x", 100<<10)
	scheme := "Evil-see-https://evil.example/fix" + strings.Repeat("y", 10<<10)
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/scheme/") {
			w.Header().Set("WWW-Authenticate", scheme+` realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		// net/http writes its own reason phrase: write the status line by hand.
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 503 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", phrase)
		buf.Flush()
	}))
	t.Cleanup(hostile.Close)
	h := newHarness(t, harnessOptions{upstreamURL: hostile.URL, retry: upstream.RetryPolicy{Attempts: 1}})

	if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", containerdAccept); r.status != http.StatusServiceUnavailable {
		t.Fatalf("got %d %.200s, want the upstream's 503", r.status, r.body)
	}
	r := h.do(t, http.MethodGet, "/status", nil)
	if strings.Contains(string(r.body), "evil.example") || len(r.body) > 64<<10 {
		t.Errorf("the status page carries the upstream's reason phrase (%d bytes)", len(r.body))
	}
	if !strings.Contains(string(r.body), "(HTTP 503)") {
		t.Errorf("the status page does not say the upstream answered 503")
	}
	r = h.do(t, http.MethodGet, "/v2/library/scheme/manifests/v1", containerdAccept)
	if r.status != http.StatusUnauthorized || strings.Contains(string(r.body), "evil.example") {
		t.Errorf("unsupported auth scheme: got %d %.300s, want 401 without the upstream's words", r.status, r.body)
	}
}
