package proxy_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// TestWarmImageNames: a name without a registry is on the default
// upstream, whichever it is; on docker.io a one-part name is an official
// image.
func TestWarmImageNames(t *testing.T) {
	t.Parallel()
	dgst := digest.FromString("x")
	for _, def := range []string{"docker.io", "registry.example.com", "internal"} {
		u, _ := url.Parse("https://" + def)
		srv := buildServer(t, serverParts{store: cache.New(inmemory.New()), defaultUp: def,
			upstreams: []upstream.Config{{Name: def, URL: u}, {Name: "quay.io", URL: u}, {Name: "harbor", URL: u}}}).srv
		tests := []struct{ image, upstream, repo, tag string }{
			{"redis:2.8.23", def, map[bool]string{true: "library/redis", false: "redis"}[def == "docker.io"], "2.8.23"},
			{"team/app", def, "team/app", "latest"},
			{"quay.io/org/app:v1", "quay.io", "org/app", "v1"},
			{"localhost:5000/app:v2", "localhost:5000", "app", "v2"},
			{"docker.io/library/redis@" + dgst.String(), "docker.io", "library/redis", ""},
			{"harbor/team/app:1", "harbor", "team/app", "1"},
			{"QUAY.IO/org/app:v1", "quay.io", "org/app", "v1"},
			{"redis@" + dgst.String(), def, map[bool]string{true: "library/redis", false: "redis"}[def == "docker.io"], ""},
		}
		for _, tt := range tests {
			up, repo, tag, _, err := srv.ParseImage(tt.image)
			if err != nil || up != tt.upstream || repo != tt.repo || tag != tt.tag {
				t.Errorf("default %s: %s: %s %s %q %v; want %s %s %q", def, tt.image, up, repo, tag, err, tt.upstream, tt.repo, tt.tag)
			}
		}
		for _, bad := range []string{"team/UPPER", "Library/x:1", "x:-bad"} {
			if _, _, _, _, err := srv.ParseImage(bad); err == nil || !strings.Contains(err.Error(), "NAME_INVALID") {
				t.Errorf("%s: %v, want NAME_INVALID", bad, err)
			}
		}
	}
}

// TestWarmErrorsSayNoMoreThanTheAPI: a warm that fails tells the caller
// what the registry API would: never the upstream's address or body.
func TestWarmErrorsSayNoMoreThanTheAPI(t *testing.T) {
	t.Parallel()
	addr := closedAddr(t)
	h := newHarness(t, harnessOptions{upstreamURL: "http://" + addr, retry: fastRetries})
	res, err := proxy.Client{Server: h.url}.Warm(context.Background(), []string{"library/app:v1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Error; got != "UNAVAILABLE: upstream docker.io unreachable" || strings.Contains(got, addr) {
		t.Fatalf("warm error %q", got)
	}
	if !strings.Contains(h.logs.String(), addr) {
		t.Fatal("the log lost the cause")
	}
}

// TestWarmTakesOnlyJSON: a warm request that a cross-site form could send
// (text/plain, form-encoded, multipart, or no type) is refused with 415
// before anything is asked of upstream, and so are bodies too large, with
// trailing data, or of the wrong shape (413, 400); the same request as
// application/json (what regnorm warm sends) warms the image.
func TestWarmTakesOnlyJSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	body := `{"images":["library/app:v1"]}`
	for _, tt := range []struct {
		contentType, body string
		want              int
	}{
		{"text/plain", body, http.StatusUnsupportedMediaType},
		{"text/plain; charset=utf-8", body, http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", body, http.StatusUnsupportedMediaType},
		{"multipart/form-data; boundary=x", body, http.StatusUnsupportedMediaType},
		{"", body, http.StatusUnsupportedMediaType},
		{"application/json", `{"images":["library/app:v1"],"x":"` + strings.Repeat("x", 1<<20) + `"}`, http.StatusRequestEntityTooLarge},
		{"application/json", body + `{"images":["library/app:v1"]}`, http.StatusBadRequest},
		{"application/json", body + ` trailing`, http.StatusBadRequest},
		{"application/json", `["library/app:v1"]`, http.StatusBadRequest},
	} {
		hits := h.front.count()
		r := h.doBody(t, http.MethodPost, "/api/v1/warm", http.Header{"Content-Type": {tt.contentType}}, tt.body)
		if r.status != tt.want || r.ociError(t) != errcode.Unsupported {
			t.Errorf("Content-Type %q, %.60s: %d %s, want %d", tt.contentType, tt.body, r.status, r.body, tt.want)
		}
		if n := h.front.count() - hits; n != 0 {
			t.Errorf("Content-Type %q, %.60s: %d upstream requests", tt.contentType, tt.body, n)
		}
	}
	r := h.doBody(t, http.MethodPost, "/api/v1/warm", http.Header{"Content-Type": {"application/json; charset=utf-8"}}, body)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"originalDigest"`) {
		t.Fatalf("warm as application/json: %d %s", r.status, r.body)
	}
	res, err := proxy.Client{Server: h.url}.Warm(context.Background(), []string{"library/app:v1"}, nil)
	if err != nil || len(res) != 1 || res[0].Error != "" {
		t.Fatalf("regnorm warm's client: %+v %v", res, err)
	}
}
