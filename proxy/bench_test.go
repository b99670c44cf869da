package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// BenchmarkCachedBlobVsFileServer serves one cached blob (200 MB, or
// REGNORM_BENCH_BLOB_MB) over loopback through regnorm and through
// http.FileServer on the very same file, alternating, and reports both
// throughputs and their ratio (goal: ratio >= 0.9).
//
//	go test ./proxy -run '^$' -bench CachedBlobVsFileServer -benchtime 10x
func BenchmarkCachedBlobVsFileServer(b *testing.B) {
	size := 200 << 20
	if v, err := strconv.Atoi(os.Getenv("REGNORM_BENCH_BLOB_MB")); err == nil && v > 0 {
		size = v << 20
	}
	root := b.TempDir()
	store := cache.New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100}))
	dgst := ingestRandom(b, store, size)
	// The repository is known to hold it, as after a pull through regnorm.
	if err := store.PutLink(context.Background(), "docker.io", "library/bench", dgst); err != nil {
		b.Fatal(err)
	}
	blobFile := filepath.Join(root, "blobs", "sha256", dgst.Encoded()[:2], dgst.Encoded(), "data")

	upstreamURL, _ := url.Parse("http://127.0.0.1:1") // never contacted: the blob is cached
	srv := buildServer(b, serverParts{store: store, upstreams: []upstream.Config{{Name: "docker.io", URL: upstreamURL}}}).srv
	proxySrv := httptest.NewServer(srv.Handler(nil))
	defer proxySrv.Close()
	fileSrv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(blobFile))))
	defer fileSrv.Close()

	get := timedGet(b, size)
	proxyURL := proxySrv.URL + "/v2/library/bench/blobs/" + dgst.String()
	fileURL := fileSrv.URL + "/data"
	get(proxyURL) // warm the page cache and connections
	get(fileURL)

	b.ResetTimer()
	var viaProxy, viaFile time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			viaProxy += get(proxyURL)
			viaFile += get(fileURL)
		} else {
			viaFile += get(fileURL)
			viaProxy += get(proxyURL)
		}
	}
	mb := float64(size) * float64(b.N) / 1e6
	b.ReportMetric(mb/viaProxy.Seconds(), "proxy_MB/s")
	b.ReportMetric(mb/viaFile.Seconds(), "fileserver_MB/s")
	b.ReportMetric(viaFile.Seconds()/viaProxy.Seconds(), "ratio")
}

func ingestRandom(b *testing.B, store *cache.Store, size int) digest.Digest {
	b.Helper()
	buf := make([]byte, size)
	rand.Read(buf)
	dgst := digest.FromBytes(buf)
	in, err := store.IngestBlob(context.Background(), dgst, int64(size))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := in.Write(buf); err != nil {
		b.Fatal(err)
	}
	if err := in.Commit(context.Background()); err != nil {
		b.Fatal(err)
	}
	return dgst
}

// BenchmarkColdBlobVsRelay: one client GETs a cold blob (48 MB, or
// REGNORM_BENCH_COLD_MB) through regnorm, which downloads it from the
// upstream into its cache and streams it to the client as it arrives, and
// through a plain relay (httputil.ReverseProxy) to the same upstream,
// alternating, a fresh blob each round. Reports both throughputs and their
// ratio (goal: ratio >= 0.5).
//
//	go test ./proxy -run '^$' -bench ColdBlobVsRelay -benchtime 5x
func BenchmarkColdBlobVsRelay(b *testing.B) {
	size := 48 << 20
	if v, err := strconv.Atoi(os.Getenv("REGNORM_BENCH_COLD_MB")); err == nil && v > 0 {
		size = v << 20
	}
	// The upstream answers from memory, so that the figures compare regnorm
	// with a relay, not with the upstream's storage.
	var mu sync.Mutex
	blobs := map[string][]byte{}
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		blob, ok := blobs[path.Base(r.URL.Path)]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer origin.Close()
	upstreamURL, _ := url.Parse(origin.URL)
	store := cache.New(filesystem.New(filesystem.DriverParameters{RootDirectory: b.TempDir(), MaxThreads: 100}))
	srv := buildServer(b, serverParts{store: store, upstreams: []upstream.Config{{Name: "docker.io", URL: upstreamURL}}, spoolDir: b.TempDir()}).srv
	proxySrv := httptest.NewServer(srv.Handler(nil))
	defer proxySrv.Close()
	relaySrv := httptest.NewServer(httputil.NewSingleHostReverseProxy(upstreamURL))
	defer relaySrv.Close()

	get := timedGet(b, size)
	push := func() digest.Digest {
		buf := make([]byte, size)
		rand.Read(buf)
		d := digest.FromBytes(buf)
		mu.Lock()
		clear(blobs) // one blob in memory at a time
		blobs[d.String()] = buf
		mu.Unlock()
		return d
	}
	path := func(d digest.Digest) string { return "/v2/library/bench/blobs/" + d.String() }
	get(relaySrv.URL + path(push())) // connections and the upstream's first blob

	b.ResetTimer()
	var viaProxy, viaRelay time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := push()
		b.StartTimer()
		// Both read the same blob, which is cold in regnorm's cache.
		if i%2 == 0 {
			viaProxy += get(proxySrv.URL + path(d))
			viaRelay += get(relaySrv.URL + path(d))
		} else {
			viaRelay += get(relaySrv.URL + path(d))
			viaProxy += get(proxySrv.URL + path(d))
		}
	}
	mb := float64(size) * float64(b.N) / 1e6
	b.ReportMetric(mb/viaProxy.Seconds(), "regnorm_MB/s")
	b.ReportMetric(mb/viaRelay.Seconds(), "relay_MB/s")
	b.ReportMetric(viaRelay.Seconds()/viaProxy.Seconds(), "ratio")
}

// timedGet returns a function that GETs a blob of size bytes, checks that
// all of it came, and says how long it took.
func timedGet(b *testing.B, size int) func(u string) time.Duration {
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	return func(u string) time.Duration {
		start := time.Now()
		resp, err := client.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(size) || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d bytes, status %d, %v", u, n, resp.StatusCode, err)
		}
		return time.Since(start)
	}
}
