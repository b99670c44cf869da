//go:build e2e

package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// TestHostileRequests: the built binary refuses malformed and hostile
// requests with OCI errors (a plain 431 only for headers over net/http's
// own 64 KiB cap), never contacts upstream for them, and keeps serving.
func TestHostileRequests(t *testing.T) {
	registryURL, _ := startRegistry(t)
	target, _ := url.Parse(registryURL)
	var upstreamHits atomic.Int64
	relay := httputil.NewSingleHostReverseProxy(target)
	upstreamURL := serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		relay.ServeHTTP(w, r)
	}))
	proxyURL, _ := startRegnorm(t, upstreamURL, "")

	long := strings.Repeat("a", 300)
	tests := []struct {
		name, path string
		header     map[string]string
		wantStatus int
		wantCode   string // "" when the answer is not an OCI error
	}{
		{"dot dot", "/v2/library/../../etc/passwd/manifests/latest", nil, 400, "NAME_INVALID"},
		{"encoded dot dot", "/v2/library/%2e%2e/x/manifests/v1", nil, 400, "NAME_INVALID"},
		{"encoded slash", "/v2/library%2Fx/manifests/v1", nil, 400, "NAME_INVALID"},
		{"absolute-looking name", "/v2//etc/passwd/manifests/v1", nil, 400, "NAME_INVALID"},
		{"over-long name", "/v2/" + long + "/manifests/v1", nil, 400, "NAME_INVALID"},
		{"invalid tag", "/v2/library/x/manifests/-v1", nil, 400, "TAG_INVALID"},
		{"over-long tag", "/v2/library/x/manifests/" + strings.Repeat("t", 200), nil, 400, "TAG_INVALID"},
		{"invalid digest", "/v2/library/x/blobs/sha256:abc", nil, 400, "DIGEST_INVALID"},
		{"unknown ns", "/v2/library/x/manifests/v1?ns=169.254.169.254", nil, 404, "NAME_UNKNOWN"},
		{"catalog", "/v2/_catalog", nil, 404, "UNSUPPORTED"},
		{"huge header", "/v2/library/x/manifests/v1", map[string]string{"X-Junk": strings.Repeat("j", 62<<10)}, 431, "UNSUPPORTED"},
		{"header over the hard cap", "/v2/library/x/manifests/v1", map[string]string{"X-Junk": strings.Repeat("j", 100<<10)}, 431, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", proxyURL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantCode != "" {
				var e struct{ Errors []struct{ Code string } }
				if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 || e.Errors[0].Code != tt.wantCode {
					t.Fatalf("body %.200s, want code %s", body, tt.wantCode)
				}
			}
		})
	}
	if n := upstreamHits.Load(); n != 0 {
		t.Fatalf("hostile requests reached upstream %d times", n)
	}
	if getStatus(t, proxyURL+"/healthz") != http.StatusOK {
		t.Fatal("regnorm stopped serving")
	}
}
