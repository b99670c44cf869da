package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/upstream"
)

// metadataSecret is what the stand-in for a cloud metadata service answers:
// it must never reach a client.
const metadataSecret = "AKIA-METADATA-SECRET"

// newMetadataService stands in for 169.254.169.254: a server inside the
// network that counts the requests it gets.
func newMetadataService(t *testing.T) (url string, hits *atomic.Int64) {
	hits = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if strings.HasSuffix(r.URL.Path, "/tags") {
			fmt.Fprintf(w, `{"name":"library/app","tags":["%s"]}`, metadataSecret)
			return
		}
		fmt.Fprintf(w, `{"token":"%s","Code":"Success","SecretAccessKey":"%[1]s"}`, metadataSecret)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

// TestUpstreamCannotLeadInward: an upstream's redirects and token realm are
// followed only to addresses outside the network, checked on the address
// dialled; a different host:port than the configured upstream's is such a
// target even on loopback, as the tests' servers are. What the upstream's
// allowRedirectsTo lists is followed, and nothing more: a range that does
// not hold the address allows nothing, and a host name allows that host
// only. The setting, not the test's addresses, is what refuses them.
func TestUpstreamCannotLeadInward(t *testing.T) {
	t.Parallel()
	blob := digest.FromString("a layer")
	for _, tt := range []struct {
		name     string
		path     string
		byName   bool // the target is named localhost, not 127.0.0.1
		upstream func(meta string) http.HandlerFunc
	}{
		{"tags/list redirected", "/v2/library/app/tags/list", false, func(meta string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, meta+"/latest/meta-data/tags", http.StatusTemporaryRedirect)
			}
		}},
		{"blob redirected", "/v2/library/app/blobs/" + blob.String(), false, func(meta string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, meta+"/latest/meta-data/iam/security-credentials/node", http.StatusTemporaryRedirect)
			}
		}},
		{"blob redirected by name", "/v2/library/app/blobs/" + blob.String(), true, func(meta string) http.HandlerFunc {
			// localhost is resolved, then refused at the dial.
			return func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, strings.Replace(meta, "127.0.0.1", "localhost", 1)+"/latest/meta-data/", http.StatusTemporaryRedirect)
			}
		}},
		{"token realm", "/v2/library/app/manifests/v1", false, func(meta string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+meta+`/latest/meta-data/token",service="x"`)
				w.WriteHeader(http.StatusUnauthorized)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, allow := range [][]string{nil, {"10.0.0.0/8", "registry-auth.internal"}, {"127.0.0.0/8"}, {"localhost"}} {
				followed := len(allow) == 1 && (allow[0] == "127.0.0.0/8" || tt.byName)
				meta, hits := newMetadataService(t)
				hostile := httptest.NewServer(tt.upstream(meta))
				t.Cleanup(hostile.Close)
				h := newHarness(t, harnessOptions{upstreamURL: hostile.URL, retry: upstream.RetryPolicy{Attempts: 1},
					upstream: func(c *upstream.Config) { c.AllowRedirectsTo = allowList(t, allow...) }})

				r := h.do(t, http.MethodGet, tt.path, containerdAccept)
				if !followed {
					if got := hits.Load(); got != 0 {
						t.Errorf("allowRedirectsTo %q: the address inside the network got %d requests, want none", allow, got)
					}
					if r.status != http.StatusBadGateway || r.ociError(t) != "UNAVAILABLE" {
						t.Errorf("allowRedirectsTo %q: got %d %s, want 502 UNAVAILABLE", allow, r.status, r.body)
					}
					if bytes.Contains(r.body, []byte(metadataSecret)) {
						t.Errorf("allowRedirectsTo %q: the client got the metadata service's answer: %s", allow, r.body)
					}
				} else if hits.Load() == 0 {
					t.Errorf("allowRedirectsTo %q: the redirect or realm was not followed (%d %s)", allow, r.status, r.body)
				}
			}
		})
	}
}

// TestUpstreamRedirectsAreBounded: a redirect to the upstream's own host is
// followed, and a chain of them is cut after five, without retries.
func TestUpstreamRedirectsAreBounded(t *testing.T) {
	t.Parallel()
	var hops atomic.Int64
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v2/library/app/"):
			http.Redirect(w, r, "/elsewhere/tags", http.StatusTemporaryRedirect)
		case r.URL.Path == "/elsewhere/tags":
			io.WriteString(w, `{"name":"library/app","tags":["a"]}`)
		default:
			hops.Add(1)
			http.Redirect(w, r, fmt.Sprintf("/loop/%d", hops.Load()), http.StatusFound)
		}
	}))
	t.Cleanup(hostile.Close)
	h := newHarness(t, harnessOptions{upstreamURL: hostile.URL})

	r := h.do(t, http.MethodGet, "/v2/library/app/tags/list", nil)
	if r.status != http.StatusOK || string(r.body) != `{"name":"library/app","tags":["a"]}` {
		t.Fatalf("redirect to the upstream's own host: got %d %s", r.status, r.body)
	}
	r = h.do(t, http.MethodGet, "/v2/library/loop/tags/list", nil)
	if r.status != http.StatusBadGateway || r.ociError(t) != "UNAVAILABLE" {
		t.Errorf("redirect loop: got %d %s, want 502 UNAVAILABLE", r.status, r.body)
	}
	// The first request and five redirects, once: a refused chain is not
	// sent again.
	if got := hops.Load(); got != 6 {
		t.Errorf("the upstream got %d requests for the loop, want 6", got)
	}
}

// TestTagsListIsReencoded: what a client gets of tags/list is the list,
// encoded by regnorm; an answer that is not one is a 502, never relayed.
func TestTagsListIsReencoded(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		answer     string
		link       string
		wantStatus int
		wantBody   string
		wantLink   string
	}{
		{name: "extra fields dropped", answer: `{"name":"evil/other","tags":["a","b"],"html":"<script>alert(1)</script>"}`, wantStatus: 200,
			wantBody: `{"name":"library/app","tags":["a","b"]}`},
		{name: "next page rebuilt", answer: `{"name":"library/app","tags":["a"]}`, link: `<https://evil.example/steal?last=a&n=1&x=y>; rel="next"`,
			wantStatus: 200, wantBody: `{"name":"library/app","tags":["a"]}`, wantLink: `</v2/library/app/tags/list?last=a&n=1&ns=docker.io>; rel="next"`},
		{name: "no tags", answer: `{"name":"library/app","tags":null}`, wantStatus: 200, wantBody: `{"name":"library/app","tags":[]}`},
		{name: "html", answer: `<html><script>alert(1)</script></html>`, wantStatus: 502},
		{name: "invalid tag", answer: `{"name":"library/app","tags":["<script>"]}`, wantStatus: 502},
		{name: "trailing bytes", answer: `{"name":"library/app","tags":["a"]}<script>`, wantStatus: 502},
		{name: "too long", answer: `{"tags":["a"],"pad":"` + strings.Repeat("x", 16<<20) + `"}`, wantStatus: 502},
		{name: "longer than a page may be", answer: `{"tags":[` + strings.Repeat(`"`+strings.Repeat("t", 128)+`",`, 9000) + `"a"]}`, wantStatus: 502},
		{name: "more tags than a page may hold", answer: `{"tags":[` + strings.Repeat(`"t",`, 10_000) + `"a"]}`, wantStatus: 502},
		{name: "nested past reason", answer: `{"tags":["a"],"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, wantStatus: 502},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.link != "" {
					w.Header().Set("Link", tt.link)
				}
				w.Header().Set("Content-Type", "text/html")
				io.WriteString(w, tt.answer)
			}))
			t.Cleanup(hostile.Close)
			h := newHarness(t, harnessOptions{upstreamURL: hostile.URL})

			r := h.do(t, http.MethodGet, "/v2/library/app/tags/list?ns=docker.io", nil)
			if r.status != tt.wantStatus {
				t.Fatalf("got %d %.200s, want %d", r.status, r.body, tt.wantStatus)
			}
			if tt.wantStatus != 200 {
				if r.ociError(t) != "UNAVAILABLE" {
					t.Errorf("got %.200s, want UNAVAILABLE", r.body)
				}
				return
			}
			if string(r.body) != tt.wantBody || r.header.Get("Content-Type") != "application/json" {
				t.Errorf("got %.200s (%s), want %s", r.body, r.header.Get("Content-Type"), tt.wantBody)
			}
			if got := r.header.Get("Link"); got != tt.wantLink {
				t.Errorf("Link %q, want %q", got, tt.wantLink)
			}
		})
	}
}
