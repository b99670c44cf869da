package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// TestUpstreamTagListsAreBounded: a tags/list answer is read as it comes,
// within the upstream's share of maxUpstreamBodyMemory: one that would hold
// more is refused with 503 and Retry-After, and the memory is given back.
func TestUpstreamTagListsAreBounded(t *testing.T) {
	t.Parallel()
	var many []string
	for i := range 6000 {
		many = append(many, fmt.Sprintf(`"tag-%08d"`, i))
	}
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/many/") {
			io.WriteString(w, `{"name":"library/many","tags":[`+strings.Join(many, ",")+`]}`)
			return
		}
		io.WriteString(w, `{"name":"library/few","tags":["a","b"]}`)
	}))
	t.Cleanup(hostile.Close)
	h := newHarness(t, harnessOptions{upstreamURL: hostile.URL, bodyMemory: 64 << 10})

	r := h.do(t, http.MethodGet, "/v2/library/many/tags/list", nil)
	if r.status != http.StatusServiceUnavailable || r.ociError(t) != "UNAVAILABLE" || r.header.Get("Retry-After") == "" {
		t.Errorf("a tag list past the memory bound: got %d %.200s, want 503 UNAVAILABLE with Retry-After", r.status, r.body)
	}
	if r := h.do(t, http.MethodGet, "/v2/library/few/tags/list", nil); r.status != http.StatusOK || string(r.body) != `{"name":"library/few","tags":["a","b"]}` {
		t.Errorf("a small tag list: got %d %s", r.status, r.body)
	}
	if held, ok := h.heldBodies(t); !ok || held != 0 {
		t.Errorf("after the reads, %v bytes held (exported: %v), want 0", held, ok)
	}
}

// TestTagsListPages: regnorm asks upstreams for pages of at most 1000 tags
// (the client's n when smaller), and passes the upstream's next page on
// with the cursor it named: last (the spec's) or next_page (Quay's). A
// next page it cannot pass on is a 502, never a first page that reads as
// the whole list.
func TestTagsListPages(t *testing.T) {
	t.Parallel()
	quayToken := "gAAAAABg1i7jwRsgyD_X_wcMmj11T0waURK8w2MpuKG3a5B5C_iWzc1YMHTRDAPiwnqT4s0gkVdH7tUbc5HlXy7RxT139fZABKiEw7vtjNWj8D8dSAAy-fQ="
	var mu sync.Mutex
	var asked []url.Values
	link := map[string]string{
		"quay":     `</v2/library/quay/tags/list?n=100&next_page=` + url.QueryEscape(quayToken) + `>; rel="next"`,
		"two":      `</v2/library/two/tags/list?last=z&n=5>; rel="prev", </v2/library/two/tags/list?last=b&n=2>; rel="next"`,
		"unknown":  `</v2/library/unknown/tags/list?page=2>; rel="next"`,
		"long":     `</v2/library/long/tags/list?last=` + strings.Repeat("a", 600) + `>; rel="next"`,
		"badn":     `</v2/library/badn/tags/list?last=b&n=many>; rel="next"`,
		"lastpage": `</v2/library/lastpage/tags/list?last=a>; rel="prev"`,
	}
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Query())
		mu.Unlock()
		repo := strings.Split(r.URL.Path, "/")[3]
		if l := link[repo]; l != "" && r.URL.Query().Get("next_page") == "" {
			w.Header().Set("Link", l)
		}
		io.WriteString(w, `{"name":"library/`+repo+`","tags":["a","b"]}`)
	}))
	t.Cleanup(hostile.Close)
	h := newHarness(t, harnessOptions{upstreamURL: hostile.URL})
	lastAsked := func() url.Values {
		mu.Lock()
		defer mu.Unlock()
		return asked[len(asked)-1]
	}

	for _, tt := range []struct {
		path   string
		status int
		wantN  string // the n the upstream was asked for
		link   string
	}{
		{path: "/v2/library/plain/tags/list", status: 200, wantN: "1000"},
		{path: "/v2/library/plain/tags/list?n=5000", status: 200, wantN: "1000"},
		{path: "/v2/library/plain/tags/list?n=50", status: 200, wantN: "50"},
		{path: "/v2/library/quay/tags/list", status: 200, wantN: "1000",
			link: `</v2/library/quay/tags/list?n=100&next_page=` + url.QueryEscape(quayToken) + `>; rel="next"`},
		{path: "/v2/library/two/tags/list?n=2&ns=docker.io", status: 200, wantN: "2", link: `</v2/library/two/tags/list?last=b&n=2&ns=docker.io>; rel="next"`},
		{path: "/v2/library/lastpage/tags/list", status: 200, wantN: "1000"},
		{path: "/v2/library/unknown/tags/list", status: 502},
		{path: "/v2/library/long/tags/list", status: 502},
		{path: "/v2/library/badn/tags/list", status: 502},
	} {
		r := h.do(t, http.MethodGet, tt.path, nil)
		if r.status != tt.status {
			t.Errorf("%s: got %d %s, want %d", tt.path, r.status, r.body, tt.status)
			continue
		}
		if tt.status != 200 {
			if r.ociError(t) != "UNAVAILABLE" {
				t.Errorf("%s: got %s, want UNAVAILABLE", tt.path, r.body)
			}
			continue
		}
		if got := lastAsked().Get("n"); got != tt.wantN {
			t.Errorf("%s: the upstream was asked for n=%q, want %s", tt.path, got, tt.wantN)
		}
		if got := r.header.Get("Link"); got != tt.link {
			t.Errorf("%s: Link %q, want %q", tt.path, got, tt.link)
		}
	}
	// Following Quay's link asks Quay with its token.
	if r := h.do(t, http.MethodGet, "/v2/library/quay/tags/list?n=100&next_page="+url.QueryEscape(quayToken), nil); r.status != http.StatusOK {
		t.Fatalf("next page: %d %s", r.status, r.body)
	}
	if got := lastAsked(); got.Get("next_page") != quayToken || got.Get("n") != "100" || got.Has("last") {
		t.Errorf("following the next page, the upstream was asked %v", got)
	}
}
