package proxy_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	s3 "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
)

// TestS3RequestCounts counts the requests regnorm sends a real S3 server
// (versitygw) for the operations that repeat: serving a cached blob, a
// maintenance pass, and a status page load. docs/operations.md states these counts.
func TestS3RequestCounts(t *testing.T) {
	if s3Server == nil {
		t.Skip("no S3 server (REGNORM_VERSITYGW_BIN unset; scripts/test.sh sets it and REGNORM_REQUIRE_ALL)")
	}
	ctx := context.Background()
	clk := newFakeClock()
	counter := regtest.CountS3(t, s3Server.Endpoint)
	var b [8]byte
	rand.Read(b[:])
	root := "/cost-" + hex.EncodeToString(b[:])
	newStore := func() *cache.Store {
		d, err := s3.FromParameters(ctx, map[string]any{
			"bucket": s3Server.Bucket, "region": s3Server.Region, "regionendpoint": counter.Endpoint,
			"forcepathstyle": true, "secure": false, "accesskey": s3Server.AccessKey, "secretkey": s3Server.SecretKey,
			"rootdirectory": root,
		})
		if err != nil {
			t.Fatal(err)
		}
		u, err := cache.NewS3Uploads(cache.S3Params{Bucket: s3Server.Bucket, Region: s3Server.Region, Endpoint: counter.Endpoint,
			ForcePathStyle: true, AccessKey: s3Server.AccessKey, SecretKey: s3Server.SecretKey, RootDirectory: root})
		if err != nil {
			t.Fatal(err)
		}
		return cache.New(d, cache.WithMultipartUploads(u), cache.WithClock(clk.Now))
	}
	// Both stores (this process's, and the one after a restart) are built
	// before going parallel: aws-sdk-go v1 writes a package variable while
	// it builds a session, which races with any other test's requests.
	first, restarted := newStore(), newStore()
	t.Parallel()
	h := newHarness(t, harnessOptions{store: first, clock: clk, tagTTL: time.Hour, manualMaintenance: true,
		eviction: cache.EvictionPolicy{MaxAge: 720 * time.Hour, Grace: cache.DefaultSharedGrace}})
	// A small layer (it might be a manifest by its size: read whole to be
	// typed) and a large one (it cannot be: read as today).
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile, []regtest.File{{Name: "b", Content: regtest.RandomBytes(256 << 10)}},
		[]regtest.File{{Name: "c", Content: regtest.RandomBytes(mediatype.MaxManifestSize + 256<<10)}})
	h.push(t, "library/redis", "2.8.23", legacy, oneFile)
	h.pullAll(t, "library/app", "v1")
	h.pullAll(t, "library/redis", "2.8.23")
	if err := h.built.report.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	small := "/v2/library/app/blobs/" + m.Layers[1].Digest.String()
	layer := "/v2/library/app/blobs/" + m.Layers[2].Digest.String()
	if m.Layers[1].Size > mediatype.MaxManifestSize || m.Layers[2].Size <= mediatype.MaxManifestSize {
		t.Fatalf("layer sizes %d and %d: want one on each side of %d", m.Layers[1].Size, m.Layers[2].Size, mediatype.MaxManifestSize)
	}

	measure := func(name string, want map[string]int64, do func()) {
		t.Helper()
		mark := counter.Mark()
		do()
		got := counter.Since(mark)
		t.Logf("S3 requests for %s: %v", name, got)
		if !maps.Equal(got, want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	getOf := func(method, path string, header http.Header) func() {
		return func() {
			if r := h.do(t, method, path, header); r.status/100 != 2 {
				t.Fatalf("%s %s: %d", method, path, r.status)
			}
		}
	}
	get := func(header http.Header) func() { return getOf(http.MethodGet, layer, header) }
	measure("a cached blob GET", map[string]int64{"GetObject": 1}, get(nil))
	measure("a cached blob HEAD", map[string]int64{"HeadObject": 1}, getOf(http.MethodHead, layer, nil))
	// A small blob's type was learnt when it was downloaded: its GET and
	// HEAD cost what a large one's do.
	measure("a cached small blob GET", map[string]int64{"GetObject": 1}, getOf(http.MethodGet, small, nil))
	measure("a cached small blob GET of a range", map[string]int64{"GetObject": 1}, getOf(http.MethodGet, small, http.Header{"Range": {"bytes=1000-1999"}}))
	measure("a cached small blob HEAD", map[string]int64{"HeadObject": 1}, getOf(http.MethodHead, small, nil))
	clk.Advance(cache.AccessInterval)
	measure("the first cached blob GET in an hour (its use recorded)", map[string]int64{"GetObject": 1, "PutObject": 1}, get(nil))
	measure("a cached blob GET of a range", map[string]int64{"GetObject": 1}, get(http.Header{"Range": {"bytes=1000-1999"}}))
	// The report (one entry) and node-config's reports (none).
	measure("a status page load", map[string]int64{"ListObjectsV2": 2, "GetObject": 1}, func() { h.do(t, http.MethodGet, "/status", nil) })
	measure("a status page load within 5 s of the last", map[string]int64{}, func() { h.do(t, http.MethodGet, "/status", nil) })
	// A node report is one write. A new node's (or a changed state) drops
	// the listing in use, so that it shows at once; the report each node
	// repeats every 5 minutes leaves it.
	report := cache.NodeReport{Node: "node-a", HostsDir: "/etc/containerd/certs.d", ReadsHostsToml: true}
	send := func() {
		if err := h.reporter().ReportNode(ctx, report); err != nil {
			t.Fatal(err)
		}
	}
	view := func() {
		if r := h.do(t, http.MethodGet, "/api/v1/nodes", nil); r.status != http.StatusOK || !strings.Contains(string(r.body), `"node-a"`) {
			t.Fatalf("fleet view: %d %s", r.status, r.body)
		}
	}
	measure("a new node's report", map[string]int64{"PutObject": 1}, send)
	measure("a fleet view load after it", map[string]int64{"ListObjectsV2": 1, "GetObject": 1}, view)
	measure("the same report again", map[string]int64{"PutObject": 1}, send)
	measure("a fleet view load after it", map[string]int64{}, view)
	// Entries written in the last seconds are read again (S3 times have
	// one-second resolution); a minute on, only the listing is needed.
	clk.Advance(time.Minute)
	measure("a later status page load, nothing changed", map[string]int64{"ListObjectsV2": 2}, func() { h.do(t, http.MethodGet, "/status", nil) })
	// Eviction's listings: blobs, recorded uses, retained blobs, pins
	// (the webhook's); and the uploads left behind.
	measure("an idle maintenance pass", map[string]int64{"ListObjectsV2": 5, "ListMultipartUploads": 1}, func() { h.built.maintainer.Once(ctx) })

	// A new process on the same bucket knows no link, size or listing yet.
	h.store = restarted
	h.restart(t)
	measure("the first GET of a cached blob after a restart", map[string]int64{"GetObject": 2, "HeadObject": 1, "PutObject": 1}, get(nil))
	measure("the next one", map[string]int64{"GetObject": 1}, get(nil))
	// A small blob's type is learnt again, once, from a verified read: the
	// one GetObject a large blob's HEAD does not make (the other reads its
	// link, as for the GET above).
	measure("the first HEAD of a cached small blob after a restart", map[string]int64{"GetObject": 2, "HeadObject": 1, "PutObject": 1}, getOf(http.MethodHead, small, nil))
	measure("its GET then", map[string]int64{"GetObject": 1}, getOf(http.MethodGet, small, nil))
}
