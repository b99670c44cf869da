package blobfetch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/upstream"
)

type realClock struct{}

func (realClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// origin serves blob under every digest it is asked for, counting GETs;
// release, when not nil, holds each body's second half until it is closed.
// Its repository is lib/x, of the upstream "example".
func origin(t *testing.T, blob []byte, gets *atomic.Int32, release chan struct{}) remote {
	t.Helper()
	return namedOrigin(t, "example", blob, gets, release)
}

// namedOrigin is origin, as the upstream name.
func namedOrigin(t *testing.T, name string, blob []byte, gets *atomic.Int32, release chan struct{}) remote {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob[:len(blob)/2])
		w.(http.Flusher).Flush()
		if release != nil {
			<-release
		}
		w.Write(blob[len(blob)/2:])
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return remote{upstream.New(upstream.Config{Name: name, URL: u}, upstream.Options{
		Retry: upstream.RetryPolicy{Attempts: 1}, Stall: 10 * time.Second, Metrics: upstream.NewMetrics(), Log: slog.New(slog.DiscardHandler)}).Repository("lib/x")}
}

// remote is an upstream repository as a blobfetch.Remote.
type remote struct{ *upstream.Repository }

func (r remote) GetBlob(ctx context.Context, dgst digest.Digest) (blobfetch.Body, error) {
	b, err := r.Repository.GetBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func newFetcher(t *testing.T, store *cache.Store) *blobfetch.Fetcher {
	return blobfetch.New(blobfetch.Options{
		Store: store, SpoolDir: t.TempDir(), Timeout: time.Minute, Clock: realClock{},
		Metrics: blobfetch.NewMetrics(), Log: slog.New(slog.DiscardHandler),
		OnAnswered: func(context.Context, blobfetch.Remote, digest.Digest) {}, OnCommit: func(int64) {},
	})
}

// Readers that join a download under way read it from its spool while it
// grows: one upstream GET for all of them, and every one gets every byte,
// the last only once the digest verified; the cache then holds the blob.
func TestReadersShareOneDownload(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 3<<20)
	rand.Read(blob)
	dgst := digest.FromBytes(blob)
	var gets atomic.Int32
	release := make(chan struct{})
	up := origin(t, blob, &gets, release)
	store := cache.New(inmemory.New())
	fs := newFetcher(t, store)
	ctx := context.Background()

	const readers = 5
	var wg sync.WaitGroup
	got := make([][]byte, readers)
	errs := make([]error, readers)
	var tailing sync.WaitGroup
	tailing.Add(readers)
	for i := range readers {
		wg.Go(func() {
			f, err := fs.Join(up, dgst)
			if err == nil {
				f, err = fs.Ready(ctx, f, up)
			}
			var r *blobfetch.Reader
			if err == nil {
				r, err = f.Tail(ctx)
			}
			tailing.Done()
			if err != nil || r == nil {
				errs[i] = err
				return
			}
			defer r.Close()
			got[i], errs[i] = io.ReadAll(r)
		})
	}
	tailing.Wait() // every reader joined before the body was half sent
	close(release)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil || !bytes.Equal(got[i], blob) {
			t.Errorf("reader %d: %d bytes, %v", i, len(got[i]), errs[i])
		}
	}
	if gets.Load() != 1 {
		t.Errorf("%d upstream GETs for %d readers; want 1", gets.Load(), readers)
	}
	if info, err := store.StatBlob(ctx, dgst); err != nil || info.Size != int64(len(blob)) {
		t.Errorf("cache after the download: %+v, %v", info, err)
	}
}

// A body that does not match its digest is never read to its end, and
// never reaches the cache.
func TestWrongBytesAreNeverCompleted(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 1<<20)
	rand.Read(blob)
	dgst := digest.FromString("something else")
	var gets atomic.Int32
	up := origin(t, blob, &gets, nil)
	store := cache.New(inmemory.New())
	fs := newFetcher(t, store)
	ctx := context.Background()

	f, err := fs.Join(up, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if f, err = fs.Ready(ctx, f, up); err != nil {
		t.Fatal(err)
	}
	r, err := f.Tail(ctx)
	if err != nil || r == nil {
		t.Fatalf("tail: %v, %v", r, err)
	}
	defer r.Close()
	n, err := io.Copy(io.Discard, r)
	if err == nil || n >= int64(len(blob)) {
		t.Errorf("read %d of %d bytes, error %v; want an error before the last byte", n, len(blob), err)
	}
	if _, err := store.StatBlob(ctx, dgst); err == nil {
		t.Error("the wrong bytes were published in the cache")
	}
}

// Two upstreams' downloads of one digest are two downloads, each read by
// its own upstream's clients only; both verify and commit, one after the
// other, and the cache holds the blob whole.
func TestUpstreamsDownloadApart(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 1<<20)
	rand.Read(blob)
	dgst := digest.FromBytes(blob)
	var getsA, getsB atomic.Int32
	release := make(chan struct{})
	a := namedOrigin(t, "a.example", blob, &getsA, release)
	b := namedOrigin(t, "b.example", blob, &getsB, release)
	store := cache.New(inmemory.New())
	var commits atomic.Int32
	fs := blobfetch.New(blobfetch.Options{
		Store: store, SpoolDir: t.TempDir(), Timeout: time.Minute, Clock: realClock{},
		Metrics: blobfetch.NewMetrics(), Log: slog.New(slog.DiscardHandler),
		OnAnswered: func(context.Context, blobfetch.Remote, digest.Digest) {}, OnCommit: func(int64) { commits.Add(1) },
	})
	ctx := context.Background()

	var readers []*blobfetch.Reader
	for _, up := range []remote{a, b} {
		f, err := fs.Join(up, dgst)
		if err == nil {
			f, err = fs.Ready(ctx, f, up)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !f.StartedBy(up) || !f.Answered() {
			t.Fatalf("%s's client joined a download its upstream did not answer", up.Upstream())
		}
		r, err := f.Tail(ctx)
		if err != nil || r == nil {
			t.Fatalf("tail: %v, %v", r, err)
		}
		readers = append(readers, r)
	}
	close(release) // both downloads are under way: now they finish together
	for i, r := range readers {
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, blob) {
			t.Errorf("reader %d: %d bytes, %v", i, len(got), err)
		}
	}
	if getsA.Load() != 1 || getsB.Load() != 1 {
		t.Errorf("upstream GETs: %d and %d, want one each", getsA.Load(), getsB.Load())
	}
	if commits.Load() != 2 {
		t.Errorf("%d commits, want both downloads' (one replacing the other)", commits.Load())
	}
	rc, _, err := store.OpenVerified(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("cache after both commits: %d bytes, %v", len(got), err)
	}
}
