package proxy_test

import (
	"archive/tar"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// secretLayer is alice's private layer: a symlink with an xattr (so the
// symlink rule repackages it for containerd 1.6.8) whose path is a secret.
var secretLayer = []regtest.File{
	{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755},
	{Name: "opt/project-nightingale-merger", Typeflag: tar.TypeSymlink, Linkname: "/opt/x",
		PAXRecords: map[string]string{"SCHILY.xattr.user.rpm": "x"}},
}

// TestUpstreamsManifestReusesAnothersLayerVerdict: a hostile upstream that
// never sent alice's private layer serves a manifest of its own naming that
// layer's digest. The engine takes the layer's verdict and its repackaged
// form from the cache (global by digest) without reading the layer through
// the hostile client's admission, so the hostile client is answered a
// variant built on bytes only docker.io sent: it names alice's repackaged
// layer, and its attestation (readable in the hostile repository) lists the
// paths inside alice's layer.
func TestUpstreamsManifestReusesAnothersLayerVerdict(t *testing.T) {
	t.Parallel()
	var hostileManifest []byte
	var hostileManifestDigest, configDigest digest.Digest
	var config []byte
	h := aliceAndHostile(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case r.URL.Path == "/v2/evil/x/manifests/v1" || r.URL.Path == "/v2/evil/x/manifests/"+hostileManifestDigest.String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", hostileManifestDigest.String())
			w.Header().Set("Content-Length", strconv.Itoa(len(hostileManifest)))
			w.Write(hostileManifest)
		case r.URL.Path == "/v2/evil/x/blobs/"+configDigest.String():
			w.Header().Set("Content-Length", strconv.Itoa(len(config)))
			w.Write(config)
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Length", "1") // yes to every other HEAD
		default:
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		}
	})
	img := h.push(t, "team/private", "v1", regtest.ImageOptions{}, secretLayer)
	var orig ocispec.Manifest
	if err := json.Unmarshal(img.Manifest, &orig); err != nil {
		t.Fatal(err)
	}
	alice := basic("alice", "alice-secret-pw")
	alice.Set("User-Agent", "containerd/1.6.8")
	r := h.do(t, http.MethodGet, "/v2/team/private/manifests/v1", alice)
	var av ocispec.Manifest
	if err := json.Unmarshal(r.body, &av); r.status != http.StatusOK || err != nil || len(av.Layers) != 1 || av.Layers[0].Digest == orig.Layers[0].Digest {
		t.Fatalf("alice's variant with a repackaged layer: %d %s", r.status, r.body)
	}
	madeLayer := av.Layers[0].Digest

	// The hostile upstream's own image: its own config (any diff ID), and
	// alice's layer by digest, size and type (all it needs to know).
	config = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`)
	configDigest = digest.FromBytes(config)
	hm := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: configDigest, Size: int64(len(config))},
		Layers: []ocispec.Descriptor{orig.Layers[0]}}
	hm.SchemaVersion = 2
	hostileManifest, _ = json.Marshal(hm)
	hostileManifestDigest = digest.FromBytes(hostileManifest)

	evil := containerdHeader("1.6.8")
	r = h.do(t, http.MethodGet, "/v2/evil/x/manifests/v1?ns=hostile", evil)
	if r.status == http.StatusOK && strings.Contains(string(r.body), madeLayer.String()) {
		t.Errorf("the hostile client was answered a variant naming alice's repackaged layer %s, made from a layer its upstream never sent", madeLayer)
	}
	if r.status == http.StatusOK && r.header.Get("Docker-Content-Digest") != hostileManifestDigest.String() {
		variant := digest.Digest(r.header.Get("Docker-Content-Digest"))
		rr := h.do(t, http.MethodGet, "/v2/evil/x/referrers/"+variant.String()+"?ns=hostile", evil)
		var idx ocispec.Index
		json.Unmarshal(rr.body, &idx)
		for _, d := range idx.Manifests {
			am := h.do(t, http.MethodGet, "/v2/evil/x/manifests/"+d.Digest.String()+"?ns=hostile", evil)
			var m ocispec.Manifest
			json.Unmarshal(am.body, &m)
			for _, l := range m.Layers {
				env := h.do(t, http.MethodGet, "/v2/evil/x/blobs/"+l.Digest.String()+"?ns=hostile", evil)
				var dsse struct {
					Payload []byte `json:"payload"`
				}
				if env.status == http.StatusOK && json.Unmarshal(env.body, &dsse) == nil && strings.Contains(string(dsse.Payload), "project-nightingale-merger") {
					t.Errorf("the hostile client read its variant's attestation: it lists a path inside alice's private layer")
				}
			}
		}
	}
}

// TestProofsAreBoundedAsDownloadsAre: a proof (the upstream's bytes of a
// blob cached from elsewhere) is a whole download from that upstream, yet
// it takes none of the fetcher's slots: with one download at a time for the
// upstream and one waiting, six clients asking for six cached blobs through
// a second upstream that sends slowly have six downloads running against
// it at once (each as long as its client waits, with no download timeout).
// A hostile client can so start as many whole downloads as it sends
// requests; the fetcher would have run one, queued one and refused the
// rest with 503.
func TestProofsAreBoundedAsDownloadsAre(t *testing.T) {
	t.Parallel()
	const n = 6
	blobs := map[string][]byte{}
	var mu sync.Mutex
	arrived := map[string]bool{} // blob GETs, by repository
	release := make(chan struct{})
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		mu.Lock()
		content, ok := blobs[path.Base(r.URL.Path)]
		mu.Unlock()
		if !ok || !strings.Contains(r.URL.Path, "/blobs/") {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		if r.Method == http.MethodHead {
			return
		}
		mu.Lock()
		arrived[r.URL.Path] = true
		mu.Unlock()
		select { // an honest upstream, slow to send
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(content)
	}))
	t.Cleanup(second.Close)
	secondURL, _ := url.Parse(second.URL)
	h := newHarness(t, harnessOptions{
		fetches: blobfetch.Limits{Downloads: 1, Queued: 1},
		retry:   upstream.RetryPolicy{Attempts: 1},
		more:    []upstream.Config{{Name: "second", URL: secondURL}},
	})
	var layers []digest.Digest
	for i := range n {
		repo := "library/a" + strconv.Itoa(i)
		img := h.push(t, repo, "v1", regtest.ImageOptions{}, randomLayer(t, 64<<10))
		layer := digest.FromBytes(img.Layers[0])
		if r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+layer.String(), nil); r.status != http.StatusOK {
			t.Fatalf("cache %s: %d", layer, r.status)
		}
		mu.Lock()
		blobs[layer.String()] = img.Layers[0]
		mu.Unlock()
		layers = append(layers, layer)
	}

	var answered atomic.Int32
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i, layer := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = h.do(t, http.MethodGet, "/v2/library/a"+strconv.Itoa(i)+"/blobs/"+layer.String()+"?ns=second", nil).status
			answered.Add(1)
		}()
	}
	// Every request either reached the upstream or was answered, but for
	// the one the fetcher would keep waiting.
	waitFor(t, "the requests to reach the upstream or be answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(arrived)+int(answered.Load()) >= n-1
	})
	mu.Lock()
	running := len(arrived)
	mu.Unlock()
	close(release)
	wg.Wait()
	if running > 1 {
		t.Errorf("%d whole downloads of cached blobs ran against the second upstream at once, want at most its one download slot (answers %v)", running, statuses)
	}
}

// TestProofCutShortIsABadGateway: an upstream whose proof of a cached blob
// is cut short (it announces the whole length, sends half and closes) has
// failed to answer: the client is told 502, as for a download that fails,
// not 500 "internal error" (what an error that is no *errcode.Error
// becomes).
func TestProofCutShortIsABadGateway(t *testing.T) {
	t.Parallel()
	var content []byte
	var layer digest.Digest
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()):
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			if r.Method == http.MethodGet {
				w.Write(content[:len(content)/2])
				panic(http.ErrAbortHandler) // cut short
			}
		default:
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(second.Close)
	secondURL, _ := url.Parse(second.URL)
	h := newHarness(t, harnessOptions{
		retry: upstream.RetryPolicy{Attempts: 1},
		more:  []upstream.Config{{Name: "second", URL: secondURL}},
	})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, randomLayer(t, 256<<10))
	content, layer = img.Layers[0], digest.FromBytes(img.Layers[0])
	if r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+layer.String(), nil); r.status != http.StatusOK {
		t.Fatalf("cache the layer: %d", r.status)
	}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		r := h.do(t, method, "/v2/library/app/blobs/"+layer.String()+"?ns=second", nil)
		if r.status != http.StatusBadGateway {
			t.Errorf("%s through an upstream whose proof was cut short: %d %s, want 502", method, r.status, r.body)
		}
	}
}

// TestJoinerOfAnothersDownloadKeepsItsLink: a client of library/b that
// joins library/a's download of a shared layer is admitted by its HEAD
// (the upstream sends the bytes it reads). Before the change, that yes
// was its repository's link; now no link is recorded for library/b once
// the download verified, so its next read of the cached layer asks the
// upstream again (a HEAD), which nothing but the link's absence asks for.
func TestJoinerOfAnothersDownloadKeepsItsLink(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	files := randomLayer(t, 1<<20)
	img := h.push(t, "library/a", "v1", regtest.ImageOptions{}, files)
	h.push(t, "library/b", "v1", regtest.ImageOptions{}, files)
	layer := digest.FromBytes(img.Layers[0])
	a, b := "/v2/library/a/blobs/"+layer.String(), "/v2/library/b/blobs/"+layer.String()

	getArrived, headB := make(chan struct{}), make(chan struct{})
	var once1, once2 sync.Once
	var mu sync.Mutex
	seen := map[string]int{}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Method+" "+r.URL.Path]++
		mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == a:
			once1.Do(func() { close(getArrived) })
			<-headB // library/a's download waits for library/b's client to join it
		case r.Method == http.MethodHead && r.URL.Path == b:
			once2.Do(func() { close(headB) })
		}
		h.front.relay(w, r)
	})
	var wg sync.WaitGroup
	wg.Add(1)
	var ra response
	go func() { defer wg.Done(); ra = h.do(t, http.MethodGet, a, nil) }()
	<-getArrived
	rb := h.do(t, http.MethodGet, b, nil)
	wg.Wait()
	if ra.status != http.StatusOK || rb.status != http.StatusOK || digest.FromBytes(rb.body) != layer {
		t.Fatalf("library/a %d, library/b %d", ra.status, rb.status)
	}
	if seen["GET "+b] != 0 || seen["HEAD "+b] != 1 {
		t.Fatalf("library/b's client did not join library/a's download (upstream saw %v): the test's premise", seen)
	}

	mu.Lock()
	clear(seen)
	mu.Unlock()
	if r := h.do(t, http.MethodGet, b, nil); r.status != http.StatusOK {
		t.Fatalf("library/b again: %d", r.status)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 0 {
		t.Errorf("library/b's second read of the layer its client read from the upstream asked the upstream again: %v", seen)
	}
}
