package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/recent"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// TestNotReadyListsImagesPulledWhilePaging: warm --not-ready reads the
// readiness pages one by one, and the listing is recomputed every
// recent.TTL in the order images were last served. An image on a page not
// read yet that a node pulls meanwhile (an old node: it stays unknown for
// the version asked) moves to the first page, which was read already: it
// is on no page NotReady reads, and warm --not-ready leaves it cold, the
// very image the upgrade then fails on. Every image unknown before and
// after must be listed.
func TestNotReadyListsImagesPulledWhilePaging(t *testing.T) {
	t.Parallel()
	const n = 201 // one more than a page
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	images := make([]operator.PulledImage, n)
	for i := range images {
		images[i] = operator.PulledImage{Upstream: "docker.io", Repository: fmt.Sprintf("library/app%03d", i),
			Original: digest.FromString(fmt.Sprint(i)), Tags: []string{"v1"}}
	}
	r := &operator.Readiness{
		Images: func(context.Context) ([]operator.PulledImage, int, error) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(images), 0, nil
		},
		Check: func(context.Context, string, string, digest.Digest, ruleset.Set) (mirror.Readiness, error) {
			return mirror.Readiness{State: mirror.Unknown, Cached: true}, nil
		},
		Cached: func(context.Context, string, string, digest.Digest) (bool, error) { return false, nil },
		Now:    clock,
	}
	pages := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if err := r.ServeReadiness(w, req); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		pages++
		if pages == 1 {
			// After the first page: the last image is pulled again by a
			// 1.7 node (most recently served now), and the listing
			// expires.
			images = append([]operator.PulledImage{images[n-1]}, images[:n-1]...)
			now = now.Add(recent.TTL)
		}
	}))
	t.Cleanup(srv.Close)

	got, err := proxy.Client{Server: srv.URL}.NotReady(context.Background(), []string{"2.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range images {
		ref := img.Upstream + "/" + img.Repository + "@" + img.Original.String()
		if !slices.Contains(got, ref) {
			t.Errorf("%s is unknown for 2.1 before and after, but NotReady does not list it (%d of %d listed, %d pages read)", ref, len(got), n, pages)
		}
	}
}
