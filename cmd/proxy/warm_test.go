package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/regnorm/regnorm/proxy"
)

// TestWarmNotReady: `regnorm warm --clients 2.1 --not-ready` reads every
// page of the readiness of 2.1, asking only for the images that are not
// ready or unknown, and asks regnorm to warm them by their original digest
// for 2.1, besides the images named; without --clients it refuses.
func TestWarmNotReady(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var asked []string
	var warmed proxy.WarmRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/readiness":
			q := r.URL.Query()
			asked = append(asked, q.Encode())
			page := q.Get("page")
			img := proxy.ImageReadiness{Upstream: "docker.io", Repository: "library/old" + page, OriginalDigest: "sha256:" + strings.Repeat(page, 64), Status: "unknown"}
			json.NewEncoder(w).Encode(proxy.ReadinessAnswer{Containerd: "2.1.0", Images: []proxy.ImageReadiness{img}, Total: 2, Page: len(asked), Pages: 2})
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/warm":
			json.NewDecoder(r.Body).Decode(&warmed)
			var res []proxy.WarmResult
			for _, image := range warmed.Images {
				res = append(res, proxy.WarmResult{Image: image, OriginalDigest: "sha256:" + strings.Repeat("a", 64),
					Variants: []proxy.WarmVariant{{Clients: []string{"2.1.0"}, Rules: "schema1", NormalizedDigest: "sha256:" + strings.Repeat("b", 64)}}})
			}
			json.NewEncoder(w).Encode(map[string]any{"results": res})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	var stdout bytes.Buffer
	err := runWarm(context.Background(), []string{"--server", srv.URL, "--clients", "2.1", "--not-ready", "docker.io/team/app:v1"}, env(nil), &stdout, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	wantAsked := []string{"containerd=2.1&page=1&status=not-ready%2Cunknown", "containerd=2.1&page=2&status=not-ready%2Cunknown"}
	if !slices.Equal(asked, wantAsked) {
		t.Errorf("asked readiness %v, want %v", asked, wantAsked)
	}
	wantImages := []string{"docker.io/team/app:v1", "docker.io/library/old1@sha256:" + strings.Repeat("1", 64), "docker.io/library/old2@sha256:" + strings.Repeat("2", 64)}
	if !slices.Equal(warmed.Images, wantImages) || !slices.Equal(warmed.Clients, []string{"2.1"}) {
		t.Errorf("warmed %+v, want %v for 2.1", warmed, wantImages)
	}
	if n := strings.Count(stdout.String(), "containerd 2.1.0: normalized"); n != 3 {
		t.Errorf("printed %q; want a line for each of the 3 images", stdout.String())
	}

	err = runWarm(context.Background(), []string{"--server", srv.URL, "--not-ready"}, env(nil), &stdout, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--not-ready needs") {
		t.Errorf("--not-ready without --clients: %v", err)
	}
}
