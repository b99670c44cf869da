package upstream

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// sharedHolds is a HoldStore in memory that counts its writes.
type sharedHolds struct {
	mu     sync.Mutex
	until  map[string]time.Time
	writes int
}

func (m *sharedHolds) GetHold(_ context.Context, name string) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.until[name], nil
}

func (m *sharedHolds) PutHold(_ context.Context, name string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.until[name] = until
	m.writes++
	return nil
}

// stepClock is a clock that moves when told.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// heldRegistry is docker.io at h, on clock, sharing holds through store.
func heldRegistry(t *testing.T, h http.HandlerFunc, store HoldStore, clock *stepClock) *Registry {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return New(Config{Name: "docker.io", URL: u}, Options{
		Retry: RetryPolicy{Attempts: 1}, Now: clock.now, Metrics: NewMetrics(), Holds: store, Log: slog.New(slog.DiscardHandler),
	})
}

// manifestAnswer answers a manifest HEAD as a registry does.
func manifestAnswer(w http.ResponseWriter) {
	w.Header().Set("Docker-Content-Digest", digest.FromString("{}").String())
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	w.Header().Set("Content-Length", "2")
}

// TestOnlyCountedAnswersHold: a blob's answers (its CDN's 429, a budget at
// zero on every blob) set no hold and write nothing: manifests are still
// asked. A budget at zero on every manifest answer writes the shared
// record once, not once an answer.
func TestOnlyCountedAnswersHold(t *testing.T) {
	t.Parallel()
	store := &sharedHolds{until: map[string]time.Time{}}
	clock := &stepClock{t: time.Unix(1e9, 0)}
	var manifests atomic.Int32
	r := heldRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/manifests/") {
			manifests.Add(1)
			manifestAnswer(w)
			return
		}
		w.Header().Set("RateLimit-Remaining", "0")
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	}, store, clock)
	ctx := context.Background()
	repo := r.Repository("library/app")
	for range 50 {
		clock.add(10 * time.Millisecond)
		repo.HeadBlob(ctx, digest.FromString("x")) //nolint:errcheck // a 429, as sent
	}
	if _, err := repo.HeadManifest(ctx, "v1", nil); err != nil || manifests.Load() != 1 || store.writes != 0 {
		t.Fatalf("after 50 blob 429s: manifest %v (%d sent), %d shared writes; want it asked, nothing written", err, manifests.Load(), store.writes)
	}

	var budget atomic.Int32
	zero := heldRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		budget.Add(1)
		w.Header().Set("RateLimit-Remaining", "0")
		manifestAnswer(w)
	}, store, clock)
	for range 50 {
		clock.add(61 * time.Second) // past each hold, a new answer each time
		if _, err := zero.Repository("library/app").HeadManifest(ctx, "v1", nil); err != nil {
			t.Fatal(err)
		}
	}
	if store.writes != 50 || budget.Load() != 50 {
		t.Fatalf("50 held-out answers: %d writes, %d sent; want one each", store.writes, budget.Load())
	}
	store.writes = 0
	first := zero.HeldUntil()
	for range 50 {
		clock.add(10 * time.Millisecond) // within the hold: what another path might note
		zero.noteHold(ctx, &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Ratelimit-Remaining": {"0"}}})
	}
	if store.writes != 0 || !zero.HeldUntil().After(first) {
		t.Fatalf("50 answers each moving the hold by 10 ms: %d writes; want none (the hold still moves)", store.writes)
	}
}

// TestSharedHoldKeepsTheLonger: a replica that learns a short hold does not
// shorten a longer one another replica recorded, and a record a little
// past the longest hold (another replica's clock ahead) is honoured, not
// thrown away as damaged.
func TestSharedHoldKeepsTheLonger(t *testing.T) {
	t.Parallel()
	store := &sharedHolds{until: map[string]time.Time{}}
	clock := &stepClock{t: time.Unix(1e9, 0)}
	var sent atomic.Int32
	h := func(w http.ResponseWriter, req *http.Request) {
		sent.Add(1)
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}
	store.until["docker.io"] = clock.now().Add(50 * time.Minute) // another replica's
	b := heldRegistry(t, h, store, clock)
	b.noteHold(context.Background(), &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"60"}}})
	if got := store.until["docker.io"].Sub(clock.now()); got != 50*time.Minute {
		t.Fatalf("the shared hold ends in %v, want the other replica's 50m", got)
	}
	clock.add(2 * time.Minute)
	c := heldRegistry(t, h, store, clock)
	if _, err := c.Repository("library/app").HeadManifest(context.Background(), "v1", nil); err == nil || sent.Load() != 0 {
		t.Fatalf("a third replica 2m on: %v, %d sent; want held", err, sent.Load())
	}

	store.until["docker.io"] = clock.now().Add(maxHold + time.Second) // written by a clock a second ahead
	d := heldRegistry(t, h, store, clock)
	if _, err := d.Repository("library/app").HeadManifest(context.Background(), "v1", nil); err == nil || sent.Load() != 0 {
		t.Fatalf("a full hold from a clock a second ahead: %v, %d sent; want held", err, sent.Load())
	}
	if got := d.HeldUntil().Sub(clock.now()); got != maxHold {
		t.Fatalf("held for %v, want it clamped to %v", got, maxHold)
	}
}

// TestForwardedHoldsOutliveManyClients: with forwarding, clients beyond
// the bound of the holds kept (failed logins, say) push out holds that
// ended, not a client's hold still running.
func TestForwardedHoldsOutliveManyClients(t *testing.T) {
	t.Parallel()
	clock := &stepClock{t: time.Unix(1e9, 0)}
	var alice atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if user, _, _ := req.BasicAuth(); user == "alice" {
			alice.Add(1)
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	r := New(Config{Name: "docker.io", URL: u, ForwardCredentials: true}, Options{
		Retry: RetryPolicy{Attempts: 1}, Now: clock.now, Metrics: NewMetrics(), Log: slog.New(slog.DiscardHandler),
	})
	as := func(user string) *Registry {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(user, "pw")
		v, err := r.As(req)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	ctx := context.Background()
	as("alice").Repository("app").HeadManifest(ctx, "v1", nil) //nolint:errcheck // the 429 that holds her
	for i := range maxForwarded + 10 {
		as("someone" + strconv.Itoa(i))
	}
	if _, err := as("alice").Repository("app").HeadManifest(ctx, "v1", nil); err == nil || alice.Load() != 1 {
		t.Fatalf("alice after %d other clients: %v, %d sent; want still held", maxForwarded+10, err, alice.Load())
	}
}

// TestSharedHoldFollowsACreepingEnd: answers that each move the hold's end
// by less than holdRefresh still get it written once it has moved that far
// in all: the record never falls behind this replica's hold by more.
func TestSharedHoldFollowsACreepingEnd(t *testing.T) {
	t.Parallel()
	store := &sharedHolds{until: map[string]time.Time{}}
	clock := &stepClock{t: time.Unix(1e9, 0)}
	r := heldRegistry(t, func(w http.ResponseWriter, req *http.Request) {}, store, clock)
	for i := range 30 {
		r.noteHold(context.Background(), &http.Response{StatusCode: http.StatusTooManyRequests,
			Header: http.Header{"Retry-After": {strconv.Itoa(60 + 4*i)}}})
	}
	local, shared := r.HeldUntil(), store.until["docker.io"]
	if local.Sub(shared) >= holdRefresh || store.writes > 30*4/int(holdRefresh/time.Second)+1 {
		t.Fatalf("local hold %v past the record after %d writes; want within %v", local.Sub(shared), store.writes, holdRefresh)
	}
}
