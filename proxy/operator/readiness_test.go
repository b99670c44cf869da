package operator

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/recent"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// TestReadinessLooksUpOnlyWhatMayChange: past recent.TTL, an image found
// clean is not looked up again, one found ready only has its variant looked
// for (and is not-ready once that is gone), and an unknown one is looked up
// whole each time. Counts cover every page; a page lists at most
// readinessPageSize images.
func TestReadinessLooksUpOnlyWhatMayChange(t *testing.T) {
	t.Parallel()
	now := time.Unix(1e9, 0)
	var mu sync.Mutex
	checks, looks := map[string]int{}, 0
	variantThere := true
	state := func(repo string) string {
		switch {
		case strings.HasPrefix(repo, "clean"):
			return mirror.Clean
		case strings.HasPrefix(repo, "ready"):
			return mirror.Ready
		}
		return mirror.Unknown
	}
	var images []PulledImage
	for _, repo := range []string{"clean", "ready", "unknown"} {
		for i := range readinessPageSize {
			images = append(images, PulledImage{Upstream: "docker.io", Repository: repo + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Original: digest.FromString(repo)})
		}
	}
	s := &Readiness{
		Images: func(context.Context) ([]PulledImage, int, error) { return images, 0, nil },
		Check: func(_ context.Context, _, repo string, dgst digest.Digest, _ ruleset.Set) (mirror.Readiness, error) {
			mu.Lock()
			defer mu.Unlock()
			checks[state(repo)]++
			r := mirror.Readiness{State: state(repo), Cached: true}
			if r.State == mirror.Ready {
				r.Variant = digest.FromString("variant")
			}
			return r, nil
		},
		Cached: func(context.Context, string, string, digest.Digest) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			looks++
			return variantThere, nil
		},
		Rules: ruleset.DefaultPolicy(),
		Now:   func() time.Time { return now },
	}
	get := func(query string) string {
		t.Helper()
		w := httptest.NewRecorder()
		if err := s.ServeReadiness(w, httptest.NewRequest(http.MethodGet, "/api/v1/readiness?"+query, nil)); err != nil {
			t.Fatal(err)
		}
		return w.Body.String()
	}
	body := get("containerd=2.1&page=2&status=ready,unknown")
	for _, want := range []string{`"ready": 200`, `"clean": 200`, `"unknown": 200`, `"total": 400`, `"page": 2`, `"pages": 2`} {
		if !strings.Contains(body, want) {
			t.Errorf("answer lacks %s", want)
		}
	}
	if strings.Count(body, `"status": "unknown"`) != readinessPageSize {
		t.Errorf("page 2 lists %d unknown images, want %d", strings.Count(body, `"status": "unknown"`), readinessPageSize)
	}
	now = now.Add(recent.TTL)
	mu.Lock()
	variantThere = false
	mu.Unlock()
	body = get("containerd=2.3")
	if want := map[string]int{mirror.Clean: 200, mirror.Ready: 200, mirror.Unknown: 400}; checks[mirror.Clean] != want[mirror.Clean] || checks[mirror.Ready] != want[mirror.Ready] || checks[mirror.Unknown] != want[mirror.Unknown] || looks != 200 {
		t.Errorf("looked up %v and %d variants; want %v and 200", checks, looks, want)
	}
	if !strings.Contains(body, `"not-ready": 200`) || !strings.Contains(body, `"ready": 0`) {
		t.Errorf("ready images whose variant is gone are not not-ready: %.300s", body)
	}
}
