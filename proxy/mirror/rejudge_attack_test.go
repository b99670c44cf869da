package mirror_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestAttackRejudgeForwardedUnconfirmedClient: with forwarded credentials,
// alice (granted library/app) downloads the layer: the link and the sent
// record exist, and alice is confirmed. eve (granted nothing) and an
// anonymous client then ask for it while the cache misses the blob once, so
// their own download finds it cached and asks nobody: the re-judge must not
// admit them by alice's link. (Their HEAD is refused too, before open: the
// miss sends StatBlob to the upstream, which refuses them.)
func TestAttackRejudgeForwardedUnconfirmedClient(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t, regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
		{Username: "alice", Password: "a", Repos: []string{"library/app"}},
		{Username: "eve", Password: "e", Repos: []string{"eve/own"}},
	}})
	_, layer := pushApp(t, reg, "alice's secret\n")
	u, _ := url.Parse(reg.URL)
	log := slog.New(slog.DiscardHandler)
	allow, err := upstream.ParseAllowList([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	up := upstream.New(upstream.Config{Name: "docker.io", URL: u, ForwardCredentials: true, AllowRedirectsTo: allow}, upstream.Options{
		Retry: upstream.RetryPolicy{Attempts: 1}, Stall: 10 * time.Second, Metrics: upstream.NewMetrics(), Log: log})
	store := &countingStore{Store: cache.New(inmemory.New())}
	svc, _ := newService(t, store, &engine{})
	ctx := context.Background()

	as := func(user, pass string) *upstream.Registry {
		req := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		v, err := up.As(req)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	alice := svc.Repository(as("alice", "a").Repository("library/app"))
	b, err := alice.OpenBlob(ctx, layer, 0)
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	got, _ := io.ReadAll(b)
	b.Close()
	if digest.FromBytes(got) != layer {
		t.Fatal("alice did not get the layer")
	}
	// Once more from the cache, so the download is over and recorded.
	if b, err = alice.OpenBlob(ctx, layer, 0); err != nil {
		t.Fatalf("alice again: %v", err)
	}
	b.Close()

	for _, c := range []struct{ who, user, pass string }{{"eve", "eve", "e"}, {"anonymous", "", ""}} {
		for _, how := range []string{"plain", "stat"} {
			store.missBlobs.Store(1) // the top's look misses: a download of its own, which finds it cached
			repo := svc.Repository(as(c.user, c.pass).Repository("library/app"))
			var err error
			if how == "plain" {
				var b interface{ Close() error }
				b, err = repo.OpenBlob(ctx, layer, 0)
				if err == nil {
					b.Close()
				}
			} else {
				_, err = repo.StatBlob(ctx, layer)
			}
			if status := errcode.StatusOf(err); status != http.StatusUnauthorized && status != http.StatusForbidden && status != http.StatusNotFound {
				t.Errorf("%s (%s) asking for alice's layer: %v, want the upstream's refusal", c.who, how, err)
			}
		}
	}
}

// TestAttackRelayOfABlobTheRepositoryDoesNotHold: a peer asks (relayRead)
// for the layer under a repository that does not hold it upstream, while
// the cache misses the blob once: the download finds it cached and asks
// nobody, and the relay must still be refused.
func TestAttackRelayOfABlobTheRepositoryDoesNotHold(t *testing.T) {
	t.Parallel()
	f := newFixture(t, &engine{})
	ctx := context.Background()
	if err := f.svc.Repository(f.up.Repository("library/app")).Source().Ensure(ctx, f.layer); err != nil {
		t.Fatal(err)
	}
	for _, miss := range []bool{false, true} {
		if miss {
			f.store.missBlobs.Store(1)
		}
		b, err := f.svc.Repository(f.up.Repository("library/other")).ForReplica(replicas.KindBlob).OpenBlob(ctx, f.layer, 0)
		if err == nil {
			b.Close()
		}
		wantRefused(t, fmt.Sprintf("a relay under library/other (miss %t)", miss), err, http.StatusNotFound, errcode.BlobUnknown)
	}
}
