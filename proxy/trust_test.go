package proxy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// pullAs resolves repo:tag like containerd, as the client with header, and
// returns the digest and manifest it got.
func (h *harness) pullAs(t *testing.T, header http.Header, repo, tag string) (digest.Digest, []byte) {
	t.Helper()
	head := h.do(t, http.MethodHead, "/v2/"+repo+"/manifests/"+tag, header)
	if head.status != http.StatusOK {
		t.Fatalf("HEAD %s:%s: %d", repo, tag, head.status)
	}
	dgst := digest.Digest(head.header.Get("Docker-Content-Digest"))
	get := h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+dgst.String(), header)
	if get.status != http.StatusOK || digest.FromBytes(get.body) != dgst {
		t.Fatalf("GET %s@%s: %d", repo, dgst, get.status)
	}
	return dgst, get.body
}

// holdBlob makes the front answer GETs for dgst only once release is
// closed; it counts the GETs it held.
func holdBlob(f *faultyFront, dgst digest.Digest, release <-chan struct{}) *atomic.Int64 {
	var held atomic.Int64
	f.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
			held.Add(1)
			<-release
		}
		f.relay(w, r)
	})
	return &held
}

// gate is a channel the test closes with unblock, at the latest when it
// ends: a handler held on it never keeps the test servers from closing.
func gate(t *testing.T) (release <-chan struct{}, unblock func()) {
	c := make(chan struct{})
	var once sync.Once
	unblock = func() { once.Do(func() { close(c) }) }
	t.Cleanup(unblock)
	return c, unblock
}

// TestCrossRepositoryReads: the cache is global by digest, but nothing is
// served under a repository that does not hold it upstream, nor to a client
// whose credentials may not read that repository: manifests by tag and by
// digest, configs, layers, and what regnorm made from them (the normalized
// manifest, the rewritten config, the repackaged layer), while downloading
// and once cached. What a client may read, it still gets.
func TestCrossRepositoryReads(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-pw", Repos: []string{"team/private", "team/shared"}},
			{Username: "bob", Password: "bob-pw", Repos: []string{"team/shared"}},
		}},
		forward: true,
	})
	alice, bob := basic("alice", "alice-pw"), basic("bob", "bob-pw")
	big := []regtest.File{{Name: "big", Content: regtest.RandomBytes(1 << 20)}}
	private := h.push(t, "team/private", "v1", legacy, baseLayer, xattrLayer, big)
	h.push(t, "team/shared", "v1", regtest.ImageOptions{}, oneFile)
	// Both read team/shared first: the upstream has said yes to each for
	// that repository, which must not open any other repository's content.
	h.pullAs(t, bob, "team/shared", "v1")
	h.pullAs(t, alice, "team/shared", "v1")
	var orig ocispec.Manifest
	json.Unmarshal(private.Manifest, &orig)

	// While Alice's first download of the big layer is under way, Bob asks
	// for it under the repository he may read: he must not join it.
	bigLayer := orig.Layers[2].Digest
	release, unblock := gate(t)
	held := holdBlob(h.front, bigLayer, release)
	aliceDone := make(chan response)
	go func() { aliceDone <- h.do(t, http.MethodGet, "/v2/team/private/blobs/"+bigLayer.String(), alice) }()
	waitFor(t, "Alice's download to start", func() bool { return held.Load() == 1 })
	for _, who := range []http.Header{bob, alice} {
		if r := h.do(t, http.MethodGet, "/v2/team/shared/blobs/"+bigLayer.String(), who); r.status == http.StatusOK {
			t.Fatal("a layer downloading for team/private was served under team/shared")
		}
	}
	if r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+bigLayer.String(), bob); r.status != http.StatusUnauthorized {
		t.Fatalf("Bob joined Alice's download under team/private: %d", r.status)
	}
	unblock()
	if r := <-aliceDone; r.status != http.StatusOK || digest.FromBytes(r.body) != bigLayer {
		t.Fatalf("Alice's download: %d", r.status)
	}
	h.front.set(nil)

	// Alice pulls the image by tag: it is normalized (both rules), and all
	// of it is cached.
	normalized, body := h.pullAs(t, alice, "team/private", "v1")
	var norm ocispec.Manifest
	json.Unmarshal(body, &norm)
	if normalized == private.ManifestDigest || norm.Layers[1].Digest == orig.Layers[1].Digest || norm.Config.Digest == orig.Config.Digest {
		t.Fatal("the private image was not normalized: the test needs its derived content")
	}
	objects := []struct{ name, path string }{
		{"manifest by original digest", "/manifests/" + private.ManifestDigest.String()},
		{"normalized manifest", "/manifests/" + normalized.String()},
		{"original config", "/blobs/" + orig.Config.Digest.String()},
		{"rewritten config", "/blobs/" + norm.Config.Digest.String()},
		{"layer", "/blobs/" + orig.Layers[0].Digest.String()},
		{"original xattr layer", "/blobs/" + orig.Layers[1].Digest.String()},
		{"repackaged layer", "/blobs/" + norm.Layers[1].Digest.String()},
		{"big layer", "/blobs/" + bigLayer.String()},
	}
	for _, o := range objects {
		if r := h.do(t, http.MethodGet, "/v2/team/private"+o.path, alice); r.status != http.StatusOK {
			t.Fatalf("Alice's own %s: %d %s", o.name, r.status, r.body)
		}
	}
	for _, o := range objects {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			for _, c := range []struct {
				who    string
				header http.Header
				repo   string
			}{
				{"Bob", bob, "team/shared"},
				{"Alice", alice, "team/shared"},
				{"Bob", bob, "team/private"},
				{"an anonymous client", containerdAccept, "team/private"},
			} {
				r := h.do(t, method, "/v2/"+c.repo+o.path, c.header)
				if r.status == http.StatusOK {
					t.Errorf("%s got the cached %s of team/private under %s (%s)", c.who, o.name, c.repo, method)
				}
				if method == http.MethodGet && r.status != http.StatusOK {
					if code := r.ociError(t); code == "" {
						t.Errorf("refusal without an OCI error code")
					}
				}
			}
		}
	}
	if r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", bob); r.status != http.StatusUnauthorized {
		t.Errorf("Bob resolved team/private:v1: %d", r.status)
	}
	// What Bob may read, he gets.
	h.pullAs(t, bob, "team/shared", "v1")
}

// TestLinksWithoutForwarding: with regnorm's own credentials every client
// has the same rights, but an object is still served only under a
// repository that holds it upstream, as the upstream would; where it is
// held, the cached copy serves it without a download.
func TestLinksWithoutForwarding(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile, []regtest.File{{Name: "b", Content: regtest.RandomBytes(64 << 10)}})
	h.pullAll(t, "library/app", "v1")
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)

	if r := h.do(t, http.MethodGet, "/v2/library/other/manifests/"+img.ManifestDigest.String(), containerdAccept); r.status != http.StatusNotFound || r.ociError(t) != errcode.ManifestUnknown {
		t.Fatalf("manifest under another repository: %d %s", r.status, r.body)
	}
	for _, desc := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if r := h.do(t, http.MethodGet, "/v2/library/other/blobs/"+desc.Digest.String(), nil); r.status != http.StatusNotFound || r.ociError(t) != errcode.BlobUnknown {
			t.Fatalf("blob under another repository: %d %s", r.status, r.body)
		}
	}
	if err := h.reg.Client().PushImage(context.Background(), "library/copy", "v1", img); err != nil {
		t.Fatal(err)
	}
	blobGets := h.reg.Requests(http.MethodGet, "blobs")
	for _, desc := range m.Layers {
		if r := h.do(t, http.MethodGet, "/v2/library/copy/blobs/"+desc.Digest.String(), nil); r.status != http.StatusOK || digest.FromBytes(r.body) != desc.Digest {
			t.Fatalf("blob under a repository that holds it: %d", r.status)
		}
	}
	if got := h.reg.Requests(http.MethodGet, "blobs") - blobGets; got != 0 {
		t.Fatalf("%d blobs downloaded again: the cached copies should serve", got)
	}
}

// plainTarImage pushes an OCI image whose one layer is an uncompressed tar
// of n files and a symlink with a user xattr, and returns the manifest
// digest and the layer.
func plainTarImage(t *testing.T, h *harness, repo, tag string, n int) (digest.Digest, []byte) {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for i := range n {
		body := regtest.RandomBytes(300)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%03d", i), Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "f000", Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.rpm": "x"}})
	tw.Close()
	raw := layer.Bytes()
	config, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(raw)}}})
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(raw), Size: int64(len(raw))}}}
	m.SchemaVersion = 2
	manifest, _ := json.Marshal(m)
	c := h.reg.Client()
	for _, b := range [][]byte{config, raw} {
		if err := c.PushBlob(context.Background(), repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushManifest(context.Background(), repo, tag, ocispec.MediaTypeImageManifest, manifest); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(manifest), raw
}

// TestDamagedCacheNeverFeedsARule: a cached layer damaged on disk (a byte
// flipped; cut at a tar block boundary, where the archive still looks
// whole) never yields a verdict or a published blob. While upstream cannot
// replace it the pull fails; once it can, the layer is fetched again and
// the rule sees every entry (the standard library's tar reader is the
// oracle).
func TestDamagedCacheNeverFeedsARule(t *testing.T) {
	t.Parallel()
	for name, damage := range map[string]func([]byte) []byte{
		"one byte flipped":              func(b []byte) []byte { b = bytes.Clone(b); b[len(b)/3] ^= 0x20; return b },
		"cut at a tar block boundary":   func(b []byte) []byte { return b[:512*20] },
		"same size, end zeroed instead": func(b []byte) []byte { b = bytes.Clone(b); clear(b[512*20:]); return b },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			img, raw := plainTarImage(t, h, "library/app", "v1", 50)
			layer := digest.FromBytes(raw)
			// The layer is cached first, fetched by digest.
			if r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String(), nil); r.status != http.StatusOK {
				t.Fatalf("layer: %d", r.status)
			}
			if err := os.WriteFile(filepath.Join(h.root, blobDataPath(layer)), damage(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			// Upstream cannot replace it.
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, layer.String()) {
					http.Error(w, "down", http.StatusInternalServerError)
					return
				}
				h.front.relay(w, r)
			})
			if r := h.do(t, http.MethodHead, "/v2/library/app/manifests/v1", containerdAccept); r.status < 500 {
				t.Fatalf("normalizing from a damaged layer answered %d", r.status)
			}
			if v, err := h.store.GetLayerVerdict(context.Background(), layer); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("a verdict was recorded from damaged content: %+v %v", v, err)
			}
			if n, err := h.store.GetNormalization(context.Background(), img, ruleset.All().Key()); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("a normalization was recorded from damaged content: %+v %v", n, err)
			}
			if u, err := h.store.Usage(context.Background()); err != nil || u.Blobs != 0 {
				t.Fatalf("cache holds %+v (%v); want nothing: nothing built, the damaged layer gone", u, err)
			}

			h.front.set(nil)
			_, body := h.pullByTag(t, "library/app", "v1")
			var m ocispec.Manifest
			json.Unmarshal(body, &m)
			r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+m.Layers[0].Digest.String(), nil)
			if r.status != http.StatusOK || digest.FromBytes(r.body) != m.Layers[0].Digest {
				t.Fatalf("repackaged layer: %d", r.status)
			}
			if got, want := tarEntries(t, r.body), tarEntries(t, raw); got != want || want != 51 {
				t.Fatalf("repackaged layer has %d entries, the original %d (want 51)", got, want)
			}
			if v, err := h.store.GetLayerVerdict(context.Background(), layer); err != nil || v.Entries != 51 {
				t.Fatalf("verdict %+v %v, want 51 entries", v, err)
			}
		})
	}
}

func tarEntries(t *testing.T, b []byte) int {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		n++
	}
}

// blobDataPath is where the filesystem cache keeps a blob's bytes.
func blobDataPath(dgst digest.Digest) string {
	return filepath.Join("blobs", dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded(), "data")
}

// TestRebuildAsTheClient: with forwarded credentials, an evicted
// repackaged layer is rebuilt from an original fetched with the asking
// client's own credentials.
func TestRebuildAsTheClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-pw", Repos: []string{"team/private"}},
		}},
		forward: true,
	})
	alice := basic("alice", "alice-pw")
	h.push(t, "team/private", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	_, body := h.pullAs(t, alice, "team/private", "v1")
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	if res, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1}, time.Now()); err != nil || res.Remaining.Blobs != 1 {
		t.Fatalf("evict all but the rewritten config: %+v %v", res, err)
	}
	r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+m.Layers[1].Digest.String(), alice)
	if r.status != http.StatusOK || digest.FromBytes(r.body) != m.Layers[1].Digest {
		t.Fatalf("evicted repackaged layer: %d %s", r.status, r.body)
	}
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 1 {
		t.Fatalf("rebuilds = %v, want 1", n)
	}
}

// TestDownloadsAreBounded: at most Downloads run and Queued more wait;
// beyond, clients get 503 with Retry-After at once. Those admitted all
// complete.
func TestDownloadsAreBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{fetches: blobfetch.Limits{Downloads: 2, Queued: 2}})
	var blobs [][]byte
	for range 6 {
		b := regtest.RandomBytes(32 << 10)
		h.pushBlob(t, "library/x", b)
		blobs = append(blobs, b)
	}
	release, unblock := gate(t)
	var held atomic.Int64
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			held.Add(1)
			<-release
		}
		h.front.relay(w, r)
	})
	results := make(chan response, len(blobs))
	var wg sync.WaitGroup
	for _, b := range blobs {
		wg.Go(func() { results <- h.do(t, http.MethodGet, "/v2/library/x/blobs/"+digest.FromBytes(b).String(), nil) })
	}
	var refused []response
	for range 2 {
		refused = append(refused, <-results)
	}
	for _, r := range refused {
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || r.ociError(t) != errcode.Unavailable {
			t.Fatalf("over the bound: %d %s (Retry-After %q)", r.status, r.body, r.header.Get("Retry-After"))
		}
	}
	waitFor(t, "two downloads to reach upstream", func() bool { return held.Load() == 2 })
	if running, queued := h.metric(t, "regnorm_upstream_inflight_fetches", ""), h.metric(t, "regnorm_upstream_queued_fetches", ""); running != 2 || queued != 2 {
		t.Fatalf("running %v, queued %v; want 2 and 2", running, queued)
	}
	if n := h.metric(t, "regnorm_upstream_fetches_rejected_total", ""); n != 2 {
		t.Fatalf("rejected = %v, want 2", n)
	}
	unblock()
	wg.Wait()
	close(results)
	for r := range results {
		if r.status != http.StatusOK || r.err != nil {
			t.Fatalf("an admitted download: %d %v", r.status, r.err)
		}
	}
	if got := held.Load(); got != 4 {
		t.Fatalf("upstream saw %d blob downloads, want 4", got)
	}
}

// TestAbandonedDownloadIsCancelled: a download whose only client went away
// goes on for a grace period (a retry may want it), then stops and leaves
// nothing in the cache.
func TestAbandonedDownloadIsCancelled(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clk})
	// Larger than a manifest can be, so that it streams (a smaller blob
	// is read whole before its headers).
	content := regtest.RandomBytes(mediatype.MaxManifestSize + 1<<20)
	dgst := h.pushBlob(t, "library/x", content)
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.Write(content[:len(content)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // the rest never comes, until regnorm gives up
			return
		}
		h.front.relay(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/v2/library/x/blobs/"+dgst.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel() // the client goes away
	resp.Body.Close()
	waitFor(t, "the orphan timer", func() bool { return clk.Waiting() == 1 })
	if n := h.metric(t, "regnorm_upstream_inflight_fetches", ""); n != 1 {
		t.Fatalf("the download stopped before its grace: %v running", n)
	}
	clk.Advance(30 * time.Second)
	waitNoFetches(t, h)
	if n := h.metric(t, "regnorm_upstream_fetches_abandoned_total", ""); n != 1 {
		t.Fatalf("abandoned = %v, want 1", n)
	}
	if _, err := h.store.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("an abandoned download left %v", err)
	}
}

// TestSpoolBudget: a download that does not fit the spool budget goes to
// the cache only, and its client gets it whole once it is there; one that
// fits streams through the spool. The spool never holds more than the
// budget.
func TestSpoolBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{fetches: blobfetch.Limits{SpoolBytes: 1 << 20}})
	for _, tt := range []struct {
		size      int
		wantSpool float64
	}{{2 << 20, 0}, {512 << 10, 512 << 10}} {
		content := regtest.RandomBytes(tt.size)
		dgst := h.pushBlob(t, "library/x", content)
		release, unblock := gate(t)
		var sent atomic.Bool
		h.front.set(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, dgst.String()) {
				w.Header().Set("Content-Length", strconv.Itoa(len(content)))
				w.Write(content[:len(content)/2])
				w.(http.Flusher).Flush()
				sent.Store(true)
				<-release
				w.Write(content[len(content)/2:])
				return
			}
			h.front.relay(w, r)
		})
		done := make(chan response)
		go func() { done <- h.do(t, http.MethodGet, "/v2/library/x/blobs/"+dgst.String(), nil) }()
		waitFor(t, "half the blob to be sent", sent.Load)
		if tt.wantSpool == 0 {
			waitFor(t, "the download to go to the cache only", func() bool {
				for _, line := range strings.Split(h.logs.String(), "\n") {
					if strings.Contains(line, "goes to the cache only") && strings.Contains(line, dgst.String()) {
						return true
					}
				}
				return false
			})
		}
		waitFor(t, "the download to settle its spool", func() bool {
			return h.metric(t, "regnorm_spool_bytes", "") == tt.wantSpool
		})
		unblock()
		if r := <-done; r.status != http.StatusOK || !bytes.Equal(r.body, content) {
			t.Fatalf("%d bytes: %d", tt.size, r.status)
		}
		waitFor(t, "the spool to be given back", func() bool { return h.metric(t, "regnorm_spool_bytes", "") == 0 })
	}
}

// slowStat answers the first Stat of one path only once hold is closed, as
// a cache lookup that is still under way while another download publishes
// the blob.
type slowStat struct {
	storagedriver.StorageDriver
	path    string
	armed   atomic.Bool
	entered chan struct{}
	hold    chan struct{}
}

func (d *slowStat) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	if strings.HasSuffix(p, d.path) && d.armed.CompareAndSwap(true, false) {
		fi, err := d.StorageDriver.Stat(ctx, p)
		close(d.entered)
		<-d.hold
		return fi, err
	}
	return d.StorageDriver.Stat(ctx, p)
}

// TestAdmissionNeverRidesOnACacheRace: Bob's lookup finds nothing cached,
// then Alice's download publishes the blob, so Bob's own download finds it
// cached and asks upstream nothing. Bob must still be asked about.
func TestAdmissionNeverRidesOnACacheRace(t *testing.T) {
	t.Parallel()
	d := &slowStat{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 50}),
		entered: make(chan struct{}), hold: make(chan struct{})}
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-pw", Repos: []string{"team/private"}},
			{Username: "bob", Password: "bob-pw", Repos: []string{"team/shared"}},
		}},
		forward: true,
		store:   cache.New(d),
	})
	alice, bob := basic("alice", "alice-pw"), basic("bob", "bob-pw")
	dgst := h.pushBlob(t, "team/private", regtest.RandomBytes(4096))
	d.path = "/" + dgst.Encoded() + "/data"
	d.armed.Store(true)
	bobDone := make(chan response, 1)
	go func() { bobDone <- h.do(t, http.MethodGet, "/v2/team/private/blobs/"+dgst.String(), bob) }()
	<-d.entered
	if r := h.do(t, http.MethodGet, "/v2/team/private/blobs/"+dgst.String(), alice); r.status != http.StatusOK {
		t.Fatalf("Alice: %d", r.status)
	}
	waitNoFetches(t, h)
	close(d.hold)
	if r := <-bobDone; r.status == http.StatusOK {
		t.Fatal("Bob read Alice's private blob: his download found it cached and nobody asked about him")
	}
}

// TestJoinNeverInheritsAnotherClientsRefusal: a download queued for a
// repository that does not hold the blob fails with 404; a client admitted
// where the blob is held, who joined it, gets the blob, not that 404.
func TestJoinNeverInheritsAnotherClientsRefusal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{fetches: blobfetch.Limits{Downloads: 1, Queued: 8}})
	content := regtest.RandomBytes(64 << 10)
	dgst := h.pushBlob(t, "library/app", content)
	busy := h.pushBlob(t, "library/app", regtest.RandomBytes(64<<10))
	release, unblock := gate(t)
	held := holdBlob(h.front, busy, release)
	busyDone := make(chan response, 1)
	go func() { busyDone <- h.do(t, http.MethodGet, "/v2/library/app/blobs/"+busy.String(), nil) }()
	waitFor(t, "the one download slot to be taken", func() bool { return held.Load() == 1 })
	// Someone queues the digest under a repository that does not hold it.
	otherDone := make(chan response, 1)
	go func() { otherDone <- h.do(t, http.MethodGet, "/v2/library/nothere/blobs/"+dgst.String(), nil) }()
	waitFor(t, "that download to wait for a turn", func() bool { return h.metric(t, "regnorm_upstream_queued_fetches", "") == 1 })
	// The victim asks where it is held: its own HEAD says yes, it joins.
	heads := h.reg.Requests(http.MethodHead, "blobs")
	victimDone := make(chan response, 1)
	go func() { victimDone <- h.do(t, http.MethodGet, "/v2/library/app/blobs/"+dgst.String(), nil) }()
	waitFor(t, "the victim to be admitted", func() bool { return h.reg.Requests(http.MethodHead, "blobs") > heads })
	unblock()
	if r := <-otherDone; r.status != http.StatusNotFound {
		t.Fatalf("the repository that does not hold it: %d", r.status)
	}
	if r := <-victimDone; r.status != http.StatusOK || !bytes.Equal(r.body, content) {
		t.Fatalf("the admitted client got %d: another client's refusal", r.status)
	}
	<-busyDone
}

// TestWarmIsAdmittedLikeAPull: warm asks the upstream about its caller as a
// pull would; with forwarded credentials an anonymous caller learns nothing
// of a private image another client cached, and the report (and upgrade
// readiness) does not list the forwarding upstream's entries to anyone.
func TestWarmIsAdmittedLikeAPull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{
		registry: regtest.Options{TokenAuth: true, Accounts: []regtest.Account{
			{Username: "alice", Password: "alice-pw", Repos: []string{"team/private"}},
		}},
		forward: true,
		tagTTL:  time.Hour,
	})
	img := h.push(t, "team/private", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	normalized, _ := h.pullAs(t, basic("alice", "alice-pw"), "team/private", "v1")
	for _, image := range []string{"docker.io/team/private:v1", "docker.io/team/private@" + img.ManifestDigest.String()} {
		res, err := proxy.Client{Server: h.url}.Warm(context.Background(), []string{image}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := res[0]; r.Error == "" || r.OriginalDigest != "" || r.NormalizedDigest != "" || r.Changes != nil {
			t.Fatalf("an anonymous warm of %s learnt %+v", image, r)
		}
	}
	body := string(h.do(t, http.MethodGet, "/api/v1/rewrites", nil).body)
	status := string(h.do(t, http.MethodGet, "/status?containerd=1.6.8", nil).body)
	readiness := string(h.do(t, http.MethodGet, "/api/v1/readiness?containerd=1.6.8", nil).body)
	for _, secret := range []string{"team/private", normalized.String(), img.ManifestDigest.String(), "crypto-policies"} {
		if strings.Contains(body, secret) || strings.Contains(status, secret) || strings.Contains(readiness, secret) {
			t.Errorf("the report, the status page or readiness shows %q of an upstream that forwards credentials", secret)
		}
	}
	if !strings.Contains(body, `"hidden": 1`) {
		t.Errorf("the report does not say an entry is hidden: %s", body)
	}
	if !strings.Contains(readiness, `"hidden": 1`) || !strings.Contains(readiness, `"total": 0`) {
		t.Errorf("readiness does not say an image is hidden: %s", readiness)
	}
}

// TestRebuildFromDamagedOriginalHeals: an evicted repackaged layer whose
// cached original is damaged where the layer reader stops early (its first
// header) is rebuilt from the original fetched again.
func TestRebuildFromDamagedOriginalHeals(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	_, raw := plainTarImage(t, h, "library/app", "v1", 8000)
	layer := digest.FromBytes(raw)
	_, body := h.pullByTag(t, "library/app", "v1")
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	repacked := m.Layers[0].Digest
	if err := os.RemoveAll(filepath.Join(h.root, filepath.Dir(blobDataPath(repacked)))); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(raw)
	bad[100] ^= 0xff // the first header's checksum fails
	if err := os.WriteFile(filepath.Join(h.root, blobDataPath(layer)), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+repacked.String(), nil)
	if r.status != http.StatusOK || digest.FromBytes(r.body) != repacked {
		t.Fatalf("rebuild from a damaged original: %d %s", r.status, r.body)
	}
	if n := h.metric(t, "regnorm_layer_rebuilds_total", ""); n != 1 {
		t.Fatalf("rebuilds = %v, want 1", n)
	}
}

// TestLostManifestIsFetchedAgain: an upstream manifest that the cache lost
// (its repository's link remains) is fetched again, not taken for one that
// regnorm made and lost.
func TestLostManifestIsFetchedAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	h.pullByTag(t, "library/app", "v1")
	dgst := img.ManifestDigest
	if err := os.Remove(filepath.Join(h.root, "manifests", dgst.Algorithm().String(), dgst.Encoded()[:2], dgst.Encoded())); err != nil {
		t.Fatal(err)
	}
	if r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+dgst.String(), containerdAccept); r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
		t.Fatalf("a lost manifest: %d %s", r.status, r.body)
	}
}

// gatedWrites is a cache driver whose blob writes each wait for a token.
type gatedWrites struct {
	storagedriver.StorageDriver
	allow  chan struct{}
	writes atomic.Int64
}

type gatedWriter struct {
	storagedriver.FileWriter
	d *gatedWrites
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	<-w.d.allow
	w.d.writes.Add(1)
	return w.FileWriter.Write(p)
}

func (d *gatedWrites) Writer(ctx context.Context, p string, app bool) (storagedriver.FileWriter, error) {
	fw, err := d.StorageDriver.Writer(ctx, p, app)
	if err != nil {
		return nil, err
	}
	return &gatedWriter{FileWriter: fw, d: d}, nil
}

// TestAbandonedDownloadStopsItsCacheCopy: the cache is written from the
// spool behind the download; when the download is abandoned (its last
// client gone for the grace period), that copy stops at once and the slot
// is free, however far behind the cache is.
func TestAbandonedDownloadStopsItsCacheCopy(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	d := &gatedWrites{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 50}), allow: make(chan struct{})}
	h := newHarness(t, harnessOptions{clock: clk, store: cache.New(d)})
	content := regtest.RandomBytes(16 << 20) // 64 cache writes of 256 KiB
	dgst := digest.FromBytes(content)
	// The upstream serves it from memory (a push of 16 MiB is slow under -race).
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+dgst.String()) {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
			return
		}
		h.front.relay(w, r)
	})
	defer close(d.allow) // let whatever is left finish

	resp, err := http.Get(h.url + "/v2/library/x/blobs/" + dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	// The spool streams to the client although the cache has not been
	// written at all.
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the only client goes away
	waitFor(t, "the orphan timer", func() bool { return clk.Waiting() == 1 })
	clk.Advance(30 * time.Second)
	// Writes are let through slowly, one every third poll: the copy must
	// stop within a few of them, not finish its 64.
	polls := 0
	waitFor(t, "the abandoned download to end", func() bool {
		if polls++; polls%3 == 0 {
			select {
			case d.allow <- struct{}{}:
			default:
			}
		}
		return h.metric(t, "regnorm_upstream_inflight_fetches", "") == 0 && h.metric(t, "regnorm_upstream_queued_fetches", "") == 0
	})
	if n := d.writes.Load(); n >= 32 {
		t.Fatalf("the cache copy went on for %d of 64 writes after the download was abandoned", n)
	}
	if n := h.metric(t, "regnorm_upstream_fetches_abandoned_total", ""); n != 1 {
		t.Fatalf("abandoned = %v, want 1", n)
	}
	if _, err := h.store.StatBlob(context.Background(), dgst); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("an abandoned download left %v", err)
	}
}

// TestTagRefreshIsPerClient: with forwarded credentials, a tag refresh is
// shared only by clients with the same credentials. Alice and Bob may both
// read team/app, and have been confirmed; then Bob's access is revoked
// upstream. While Bob's refresh of the stale tag waits on the upstream,
// Alice asks for the same tag: she gets her own answer, at once, and
// Bob's refusal stays his.
func TestTagRefreshIsPerClient(t *testing.T) {
	t.Parallel()
	img, err := regtest.BuildImage(regtest.ImageOptions{}, oneFile)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{digest.FromBytes(img.Config).String(): img.Config}
	for _, l := range img.Layers {
		blobs[digest.FromBytes(l).String()] = l
	}
	var bobRevoked atomic.Bool
	var bobHeld atomic.Int64
	var release <-chan struct{}
	upstreamSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		if !(user == "alice" && pass == "alice-pw" || user == "bob" && pass == "bob-pw" && !bobRevoked.Load()) {
			if user == "bob" && bobRevoked.Load() && strings.Contains(r.URL.Path, "/manifests/") {
				bobHeld.Add(1)
				<-release
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="upstream"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch {
		case r.URL.Path == "/v2/team/app/manifests/v1" || r.URL.Path == "/v2/team/app/manifests/"+img.ManifestDigest.String():
			w.Header().Set("Content-Type", regtest.MediaTypeDockerManifest)
			w.Header().Set("Docker-Content-Digest", img.ManifestDigest.String())
			w.Write(img.Manifest)
		case strings.HasPrefix(r.URL.Path, "/v2/team/app/blobs/") && blobs[path.Base(r.URL.Path)] != nil:
			w.Write(blobs[path.Base(r.URL.Path)])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(upstreamSrv.Close)
	clock := newFakeClock()
	// No stall timeout ends Bob's wait: only the upstream's answer does.
	h := newHarness(t, harnessOptions{upstreamURL: upstreamSrv.URL, forward: true, clock: clock, tagTTL: 10 * time.Second,
		retry: upstream.RetryPolicy{Attempts: 1}, stall: 10 * time.Minute})
	// Made after the servers, so that it is unblocked before they close.
	release, unblock := gate(t)
	alice, bob := basic("alice", "alice-pw"), basic("bob", "bob-pw")
	for _, who := range []http.Header{alice, bob} {
		if r := h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", who); r.status != http.StatusOK {
			t.Fatalf("first pull: %d %s", r.status, r.body)
		}
	}
	// The tag goes stale; both stay confirmed for the repository.
	clock.Advance(30 * time.Second)
	bobRevoked.Store(true)

	bobDone := make(chan response, 1)
	go func() { bobDone <- h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", bob) }()
	waitFor(t, "Bob's refresh to reach the upstream", func() bool { return bobHeld.Load() == 1 })
	aliceDone := make(chan response, 1)
	go func() { aliceDone <- h.do(t, http.MethodGet, "/v2/team/app/manifests/v1", alice) }()
	select {
	case r := <-aliceDone:
		if r.status != http.StatusOK || digest.FromBytes(r.body) != img.ManifestDigest {
			t.Errorf("Alice got %d %s, want her manifest", r.status, r.body)
		}
	case <-time.After(time.Minute):
		t.Fatal("Alice waited on Bob's refresh (gave up after a minute)")
	}
	unblock()
	if r := <-bobDone; r.status != http.StatusUnauthorized {
		t.Errorf("Bob, revoked: got %d %s, want 401", r.status, r.body)
	}
}
