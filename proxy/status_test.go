package proxy_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
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

func TestStatusPageWithAThousandEntries(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	now := time.Now()
	for i := range 1000 {
		e := cache.ReportEntry{Upstream: "docker.io", Repository: fmt.Sprintf("team/app%04d", i), Tags: []string{"v1"},
			Original: digest.FromString(fmt.Sprint("o", i)), Normalized: digest.FromString(fmt.Sprint("n", i)),
			Changes:    []cache.Change{{Kind: "symlink-xattrs", Path: "layers[0]"}},
			LastServed: now.Add(-time.Duration(i) * time.Minute), TimesServed: 1}
		if err := h.store.PutReport(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	page := string(h.do(t, http.MethodGet, "/status?page=2", nil).body)
	if n := strings.Count(page, `<tr class="entry">`); n != 50 {
		t.Fatalf("page 2 lists %d entries, want 50", n)
	}
	if !strings.Contains(page, "team/app0050") || strings.Contains(page, "team/app0049<") || !strings.Contains(page, "page 2 of 20") {
		t.Fatal("page 2 is not the second fifty, most recent first")
	}
	filtered := string(h.do(t, http.MethodGet, "/status?q=app0999", nil).body)
	if n := strings.Count(filtered, `<tr class="entry">`); n != 1 {
		t.Fatalf("filter found %d entries, want 1", n)
	}
}
