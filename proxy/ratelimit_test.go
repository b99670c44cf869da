package proxy_test

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

const staleWarning = `110 - "Response is Stale"`

// rateLimitedHarness is a harness on a fake clock with a tag TTL of one
// minute, a second upstream (quay.io) on a registry of its own, and an
// image pushed to both as library/app:v1, and to docker.io's as
// library/cold:v1 too. manifests counts the manifest requests docker.io's
// front sees; after limit of them, each one gets fault.
func rateLimitedHarness(t *testing.T, limit int64, fault http.HandlerFunc) (h *harness, clock *fakeClock, img regtest.Image, manifests *atomic.Int64) {
	t.Helper()
	other := regtest.Start(t, regtest.Options{})
	otherURL, _ := url.Parse(other.URL)
	clock = newFakeClock()
	h = newHarness(t, harnessOptions{tagTTL: time.Minute, clock: clock, more: []upstream.Config{{Name: "quay.io", URL: otherURL}}})
	img = h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	h.push(t, "library/cold", "v1", regtest.ImageOptions{}, oneFile)
	if err := other.Client().PushImage(context.Background(), "library/app", "v1", img); err != nil {
		t.Fatal(err)
	}
	manifests = &atomic.Int64{}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") && manifests.Add(1) > limit {
			fault(w, r)
			return
		}
		h.front.relay(w, r)
	})
	return h, clock, img, manifests
}

// wantStale checks that path is answered with img's manifest, marked stale.
func wantStale(t *testing.T, h *harness, path string, img regtest.Image) {
	t.Helper()
	r := h.do(t, http.MethodGet, path, containerdAccept)
	if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
		t.Fatalf("GET %s: %d %s, want the cached manifest", path, r.status, r.body)
	}
	if got := r.header.Get("Warning"); got != staleWarning {
		t.Fatalf("GET %s: Warning %q, want %q", path, got, staleWarning)
	}
}

// wantHeld checks that path is answered 429 TOOMANYREQUESTS with
// Retry-After retryAfter.
func wantHeld(t *testing.T, h *harness, path, retryAfter string) {
	t.Helper()
	r := h.do(t, http.MethodGet, path, containerdAccept)
	if r.status != http.StatusTooManyRequests || r.ociError(t) != errcode.TooManyRequests || r.header.Get("Retry-After") != retryAfter {
		t.Fatalf("GET %s: %d %s Retry-After %q, want 429 TOOMANYREQUESTS, Retry-After %s", path, r.status, r.body, r.header.Get("Retry-After"), retryAfter)
	}
}

// TestRateLimitHoldsEveryReplica: an upstream that answers 429 with
// Retry-After after its first manifest GET. A tag pulled before keeps being
// served past its TTL, with a Warning header and the stale metric, by this
// replica and by another on the same cache; a cold tag gets 429 with
// Retry-After, not 5xx; the upstream is asked nothing more until
// Retry-After has passed, and once after; the other upstream is not held.
func TestRateLimitHoldsEveryReplica(t *testing.T) {
	t.Parallel()
	const appPath, coldPath = "/v2/library/app/manifests/v1", "/v2/library/cold/manifests/v1"
	h, clock, img, manifests := rateLimitedHarness(t, 1, status(http.StatusTooManyRequests, "60"))

	if r := h.do(t, http.MethodGet, appPath, containerdAccept); r.status != http.StatusOK || r.header.Get("Warning") != "" {
		t.Fatalf("first pull: %d, Warning %q", r.status, r.header.Get("Warning"))
	}
	clock.Advance(2 * time.Minute) // past the tag's TTL

	// The revalidation is refused: the record is served, stale.
	wantStale(t, h, appPath, img)
	if got := manifests.Load(); got != 2 {
		t.Fatalf("upstream saw %d manifest requests, want 2 (the GET, the refused HEAD)", got)
	}
	// Held: served stale again, and a cold tag is refused, without asking.
	wantStale(t, h, appPath, img)
	wantHeld(t, h, coldPath, "60")
	if got := manifests.Load(); got != 2 {
		t.Fatalf("upstream saw %d manifest requests while held, want 2", got)
	}
	if got := h.metric(t, "regnorm_stale_serves_total", `upstream="docker.io"`); got != 2 {
		t.Fatalf("stale serves = %v, want 2", got)
	}
	if got := h.metric(t, "regnorm_upstream_held_requests_total", `upstream="docker.io"`); got != 2 {
		t.Fatalf("held requests = %v, want 2", got)
	}
	// Another upstream is not held.
	if r := h.do(t, http.MethodGet, appPath+"?ns=quay.io", containerdAccept); r.status != http.StatusOK || r.header.Get("Warning") != "" {
		t.Fatalf("quay.io: %d, Warning %q: held by docker.io's limit", r.status, r.header.Get("Warning"))
	}

	// Another replica on the same cache honours the hold it never saw.
	h.restart(t)
	clock.Advance(30 * time.Second)
	wantStale(t, h, appPath, img)
	wantHeld(t, h, coldPath, "30")
	if got := manifests.Load(); got != 2 {
		t.Fatalf("upstream saw %d manifest requests while held, want 2", got)
	}
	if got := h.metric(t, "regnorm_upstream_held_requests_total", `upstream="docker.io"`); got != 2 {
		t.Fatalf("held requests on the second replica = %v, want 2", got)
	}

	// After Retry-After, the upstream is asked again, once.
	clock.Advance(31 * time.Second)
	wantStale(t, h, appPath, img)
	if got := manifests.Load(); got != 3 {
		t.Fatalf("upstream saw %d manifest requests after Retry-After, want 3", got)
	}
}

// TestBudgetAtZeroHolds: an upstream whose answer says RateLimit-Remaining
// is 0 is held as after a 429, until its RateLimit-Reset (a minute when it
// says nothing): a cold tag is refused 429 with Retry-After, a tag past its
// TTL served stale, by every replica, and nothing is asked of it until the
// reset.
func TestBudgetAtZeroHolds(t *testing.T) {
	t.Parallel()
	const appPath, coldPath = "/v2/library/app/manifests/v1", "/v2/library/cold/manifests/v1"
	var reset atomic.Value
	reset.Store("")
	var h *harness
	h, clock, img, manifests := rateLimitedHarness(t, 0, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("RateLimit-Limit", "100;w=21600")
		w.Header().Set("RateLimit-Remaining", "0;w=21600")
		if s := reset.Load().(string); s != "" {
			w.Header().Set("RateLimit-Reset", s)
		}
		h.front.relay(w, r)
	})
	if r := h.do(t, http.MethodGet, appPath, containerdAccept); r.status != http.StatusOK {
		t.Fatalf("first pull: %d", r.status)
	}
	wantHeld(t, h, coldPath, "60") // no reset said: the default minute
	clock.Advance(61 * time.Second)

	// The hold is over: the HEAD is sent, and says 0 again, reset in 120 s.
	reset.Store("120")
	if r := h.do(t, http.MethodGet, appPath, containerdAccept); r.status != http.StatusOK || r.header.Get("Warning") != "" {
		t.Fatalf("revalidation: %d, Warning %q", r.status, r.header.Get("Warning"))
	}
	if got := manifests.Load(); got != 2 {
		t.Fatalf("upstream saw %d manifest requests, want 2", got)
	}
	clock.Advance(90 * time.Second) // past the TTL, within the reset
	wantStale(t, h, appPath, img)
	wantHeld(t, h, coldPath, "30")
	h.restart(t)
	wantStale(t, h, appPath, img)
	if got := manifests.Load(); got != 2 {
		t.Fatalf("upstream saw %d manifest requests while its budget was spent, want 2", got)
	}
	clock.Advance(31 * time.Second)
	if r := h.do(t, http.MethodGet, appPath, containerdAccept); r.status != http.StatusOK || r.header.Get("Warning") != "" {
		t.Fatalf("after the reset: %d, Warning %q", r.status, r.header.Get("Warning"))
	}
	if got := manifests.Load(); got != 3 {
		t.Fatalf("upstream saw %d manifest requests after the reset, want 3", got)
	}
}

// TestHoldRecordBounded: a hold record another replica left in the cache
// holds the upstream until its time, but one beyond the longest hold (an
// hour) or one that cannot be read is damaged, and holds nothing.
func TestHoldRecordBounded(t *testing.T) {
	t.Parallel()
	const coldPath = "/v2/library/cold/manifests/v1"
	clock := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clock})
	h.push(t, "library/cold", "v1", regtest.ImageOptions{}, oneFile)
	ctx := context.Background()
	if err := h.store.PutHold(ctx, "docker.io", clock.Now().Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantHeld(t, h, coldPath, "1800")

	for name, damage := range map[string]func(){
		"a hold of 100 days": func() {
			if err := h.store.PutHold(ctx, "docker.io", clock.Now().Add(100*24*time.Hour)); err != nil {
				t.Fatal(err)
			}
		},
		"not JSON": func() {
			if err := os.WriteFile(filepath.Join(h.root, "holds", "docker.io"), []byte("{{{"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
	} {
		clock.Advance(time.Hour) // past any hold, and the record read again
		damage()
		if r := h.do(t, http.MethodGet, coldPath, containerdAccept); r.status != http.StatusOK {
			t.Fatalf("%s: %d %s, want the manifest", name, r.status, r.body)
		}
	}
	for _, want := range []string{"ignoring an upstream rate-limit hold beyond the longest one", "reading the upstream's rate-limit hold failed"} {
		if !strings.Contains(h.logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}
