package proxy_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// upstreamPath is what an upstream may be asked for: a well-formed name (no
// empty, dot or upper-case components) and a well-formed reference.
var upstreamPath = regexp.MustCompile(`^/v2/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*/(?:manifests/[\w][\w.-]{0,127}|manifests/[a-z0-9]+:[a-f0-9]{64}|blobs/[a-z0-9]+:[a-f0-9]{64}|tags/list)$`)

// FuzzRequestPath: whatever the path and query, the proxy answers without
// panicking; an error is an OCI error body; and the upstream is only ever
// asked for a well-formed name and reference on a configured registry.
func FuzzRequestPath(f *testing.F) {
	file, err := os.Open("testdata/paths.txt")
	if err != nil {
		f.Fatal(err)
	}
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		f.Add("GET", sc.Text())
		f.Add("HEAD", sc.Text())
	}
	file.Close()

	var mu sync.Mutex
	var bad []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !upstreamPath.MatchString(r.URL.EscapedPath()) {
			mu.Lock()
			bad = append(bad, r.URL.EscapedPath())
			mu.Unlock()
		}
		http.Error(w, `{"errors":[{"code":"NAME_UNKNOWN"}]}`, http.StatusNotFound)
	}))
	f.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	srv := buildServer(f, serverParts{harnessOptions: harnessOptions{retry: upstream.RetryPolicy{Attempts: 1}},
		store: cache.New(inmemory.New()), upstreams: []upstream.Config{{Name: "docker.io", URL: u}}, spoolDir: f.TempDir()}).srv
	handler := srv.Handler(http.NotFoundHandler())

	f.Fuzz(func(t *testing.T, method, target string) {
		if method != "GET" && method != "HEAD" && method != "PUT" && method != "DELETE" {
			return
		}
		req, err := http.NewRequest(method, "http://proxy"+target, nil)
		if err != nil || !strings.HasPrefix(req.URL.EscapedPath(), "/") || req.URL.Host != "proxy" {
			return
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code >= 400 && method == "GET" && strings.HasPrefix(req.URL.Path, "/v2/") {
			var body struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) == 0 || body.Errors[0].Code == "" {
				t.Fatalf("%s %s: %d with a body that is not an OCI error: %q", method, target, rec.Code, rec.Body.Bytes())
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(bad) > 0 {
			t.Fatalf("%s %s: upstream was asked for %q", method, target, bad)
		}
	})
}
