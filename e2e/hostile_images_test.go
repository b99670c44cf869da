//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestHostileImagesAndUpstream: while clients pull a good upstream's images
// (one as it is, one that containerd 1.6.8 needs fixed), another upstream
// serves hostile images (symlinks with 512 KiB paths, zstd frames that
// declare 128 MiB windows, an index of 1000 children it does not have,
// layers it never sends) and misbehaves as an upstream (the good image's
// bytes typed as an index, a manifest typed as an HTML page, redirects
// inward, a blob that never ends), and clients send made-up methods. It
// fails if regnorm's memory grows more than 256 MiB above idle, if the good
// images are ever served other than byte for byte with their media type or
// not fixed, if a redirect is followed inward, if an HTML type is ever
// served, or if a report, a page, the metrics or the upstream requests grow
// past their bounds. Bounded in
// time (REGNORM_HOSTILE_DURATION, default 10s) and count.
func TestHostileImagesAndUpstream(t *testing.T) {
	duration := envOr("REGNORM_HOSTILE_DURATION", 10*time.Second, time.ParseDuration)
	const (
		rssBound    = 256 << 10 // kB above idle
		reportBound = 4 << 20   // bytes of /api/v1/rewrites and /status
		wideIndex   = 1000      // children the hostile index lists
		maxBlob     = 64 << 20  // the hostile upstream's maxBlobSize
	)
	ctx := context.Background()

	// The good upstream: a real registry with one ordinary image.
	goodURL, _ := startRegistry(t)
	good, err := regtest.BuildImage(regtest.ImageOptions{}, []regtest.File{{Name: "bin/app", Content: regtest.RandomBytes(1 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: goodURL}).PushImage(ctx, "good/app", "v1", good); err != nil {
		t.Fatal(err)
	}
	// And one that containerd 1.6.8 needs fixed: its layers are scanned
	// and repackaged beside the hostile images'.
	// A layer of the good upstream's that nobody has pulled yet, whose digest
	// the hostile upstream claims to have too, and drips.
	coldLayer := regtest.RandomBytes(256 << 10)
	if err := (&regtest.Client{Base: goodURL}).PushBlob(ctx, "good/cold", coldLayer); err != nil {
		t.Fatal(err)
	}
	coldDigest := digest.FromBytes(coldLayer)
	goodXattr, err := regtest.BuildImage(regtest.ImageOptions{}, []regtest.File{
		{Name: "bin/app", Content: regtest.RandomBytes(1 << 20)},
		{Name: "bin/link", Typeflag: tar.TypeSymlink, Linkname: "app", PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: goodURL}).PushImage(ctx, "good/xattr", "v1", goodXattr); err != nil {
		t.Fatal(err)
	}

	// The hostile upstream's images, in a real registry behind it.
	badURL, _ := startRegistry(t)
	bad := &regtest.Client{Base: badURL}
	var hostileTags []string
	for i := range 4 {
		img, err := regtest.BuildImage(regtest.ImageOptions{}, append(regtest.LongSymlinks(128, 512<<10),
			regtest.File{Name: fmt.Sprintf("id-%d", i), Content: regtest.RandomBytes(16)}))
		if err != nil {
			t.Fatal(err)
		}
		if err := bad.PushImage(ctx, "bomb/paths", fmt.Sprintf("v%d", i), img); err != nil {
			t.Fatal(err)
		}
		hostileTags = append(hostileTags, fmt.Sprintf("bomb/paths:v%d", i))
	}
	for i := range 6 {
		// 128 MiB of decoded zeros in a frame that declares a 128 MiB
		// window; each a little different, so each is scanned.
		img := rawImage(t, ocispec.MediaTypeImageLayerZstd, regtest.ZstdWindowBomb(27, 128<<20+int64(i)*512))
		if err := bad.PushImage(ctx, "bomb/window", fmt.Sprintf("v%d", i), img); err != nil {
			t.Fatal(err)
		}
		hostileTags = append(hostileTags, fmt.Sprintf("bomb/window:v%d", i))
	}
	// Images whose layers the hostile upstream never sends: scans of them
	// wait for downloads that do not come.
	stalled := map[string]bool{}
	var slowTags []string
	for i := range 6 {
		img, err := regtest.BuildImage(regtest.ImageOptions{}, []regtest.File{{Name: fmt.Sprintf("slow-%d", i), Content: regtest.RandomBytes(64)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := bad.PushImage(ctx, "bomb/slow", fmt.Sprintf("v%d", i), img); err != nil {
			t.Fatal(err)
		}
		stalled["/v2/bomb/slow/blobs/"+digest.FromBytes(img.Layers[0]).String()] = true
		slowTags = append(slowTags, fmt.Sprintf("v%d", i))
	}
	wide := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for i := range wideIndex {
		wide.Manifests = append(wide.Manifests, ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString(fmt.Sprint("absent", i)), Size: 500,
			Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"},
		})
	}
	// Served by the hostile upstream itself: a registry refuses an index
	// whose children it does not have.
	wideBytes, _ := json.Marshal(wide)

	// Where an inward redirect would lead: it stands for a metadata service.
	var inward atomic.Int64
	inwardURL, _ := url.Parse(serveLocal(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inward.Add(1)
		io.WriteString(w, `{"name":"secret","tags":["metadata"]}`)
	})))
	// Another host name for it than the upstreams', as an upstream names one.
	inwardBase := "http://localhost:" + inwardURL.Port()

	var wideChildGets, stalledGets atomic.Int64
	hostileURL := serveLocal(t, hostileUpstream(t, badURL, good.Manifest, wideBytes, stalled, &stalledGets, inwardBase, &wideChildGets))
	proxyURL, p := startRegnorm(t, goodURL, fmt.Sprintf(`- name: hostile.example
  url: %s
  maxBlobSize: %d
`, hostileURL, maxBlob))
	idleRSS := vmField(t, p.cmd.Process.Pid, "VmRSS:")
	seriesBefore := countSeries(scrape(t, proxyURL))

	// Memory is sampled from the load's start to the test's end.
	var peakRSS, peakReport atomic.Int64
	sampleRSS := func() { peakRSS.Store(max(peakRSS.Load(), vmField(t, p.cmd.Process.Pid, "VmRSS:"))) }
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
				sampleRSS()
			}
		}
	}()
	defer func() { close(stopSampling); <-sampled }()

	var goodServed, goodFixed, hostileAsked, wideAsked, spam atomic.Int64
	var mu sync.Mutex
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	client := &http.Client{Timeout: 2 * time.Minute}
	getIn := func(ctx context.Context, method, path, ua string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, proxyURL+path, nil)
		if err != nil {
			return nil, nil, err
		}
		req.Header.Set("Accept", acceptAll)
		if ua != "" {
			req.Header.Set("User-Agent", ua)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 2*maxBlob))
		return resp, body, err
	}
	checkType := func(path string, resp *http.Response) {
		if ct := resp.Header.Get("Content-Type"); strings.Contains(ct, "html") && !strings.HasPrefix(path, "/status") {
			fail("%s served as %q", path, ct)
		}
	}

	// First, scans that wait for downloads that never come: more of them
	// than layer work may run at once (4). They must not hold up the rest.
	slowCtx, stopSlow := context.WithCancel(ctx)
	var slow sync.WaitGroup
	defer func() { stopSlow(); slow.Wait() }()
	for _, tag := range slowTags {
		slow.Go(func() {
			getIn(slowCtx, http.MethodGet, "/v2/bomb/slow/manifests/"+tag+"?ns=hostile.example", "containerd/1.6.8")
		})
	}
	for deadline := time.Now().Add(time.Minute); stalledGets.Load() < 4; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the stalled layers were asked for within a minute, want 4", stalledGets.Load())
		}
	}

	runCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	get := func(method, path, ua string) (*http.Response, []byte, error) {
		return getIn(runCtx, method, path, ua)
	}
	var wg sync.WaitGroup
	loop := func(f func(n int)) {
		wg.Go(func() {
			for n := 0; runCtx.Err() == nil; n++ {
				f(n)
			}
		})
	}
	// Two clients of the good upstream: its image, byte for byte and typed
	// as upstream has it, by tag and by digest, and its layer.
	for range 2 {
		loop(func(n int) {
			ref := []string{"v1", good.ManifestDigest.String()}[n%2]
			resp, body, err := get(http.MethodGet, "/v2/good/app/manifests/"+ref, "containerd/2.3.4")
			if err != nil {
				return // the run's end
			}
			if resp.StatusCode != http.StatusOK || string(body) != string(good.Manifest) ||
				resp.Header.Get("Content-Type") != regtest.MediaTypeDockerManifest {
				fail("good manifest %s: %d %q, %d bytes, want the upstream's", ref, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
				return
			}
			layer := good.Layers[0]
			resp, body, err = get(http.MethodGet, "/v2/good/app/blobs/"+digest.FromBytes(layer).String(), "containerd/2.3.4")
			if err != nil {
				return
			}
			if resp.StatusCode != http.StatusOK || digest.FromBytes(body) != digest.FromBytes(layer) {
				fail("good layer: %d, %d bytes, want it byte for byte", resp.StatusCode, len(body))
				return
			}
			goodServed.Add(1)
		})
	}
	// A client of the good upstream that needs a layer fixed: it gets the
	// variant, however many scans wait on the hostile upstream.
	loop(func(int) {
		resp, body, err := get(http.MethodGet, "/v2/good/xattr/manifests/v1", "containerd/1.6.8")
		if err != nil {
			return
		}
		if resp.StatusCode != http.StatusOK || string(body) == string(goodXattr.Manifest) {
			fail("good xattr image for containerd 1.6.8: %d %.200s, want the variant", resp.StatusCode, body)
			return
		}
		goodFixed.Add(1)
	})
	// Hostile images, pulled as containerd 1.6.8 (every rule that scans
	// layers) and as a client that names no version, two at once.
	for i := range 4 {
		loop(func(n int) {
			ref := hostileTags[(i+n)%len(hostileTags)]
			repo, tag, _ := strings.Cut(ref, ":")
			ua := []string{"containerd/1.6.8", "crane/0.20"}[i%2]
			hostileAsked.Add(1) // a scan may outlast the run: asking counts
			if resp, _, err := get(http.MethodGet, "/v2/"+repo+"/manifests/"+tag+"?ns=hostile.example", ua); err == nil {
				checkType(repo, resp)
			}
		})
	}
	// The hostile upstream's own tricks, each on its own (a blob that
	// never ends must not hold up the others), and the wide index.
	tricks := []string{
		"/v2/good/app/manifests/v1?ns=hostile.example",
		"/v2/good/app/manifests/" + good.ManifestDigest.String() + "?ns=hostile.example",
		"/v2/trap/page/manifests/v1?ns=hostile.example",
		"/v2/trap/redirect/tags/list?ns=hostile.example",
		"/v2/trap/redirect/blobs/" + digest.FromString("redirect").String() + "?ns=hostile.example",
		"/v2/trap/endless/blobs/" + digest.FromString("endless").String() + "?ns=hostile.example",
		"/v2/bomb/wide/manifests/v1?ns=hostile.example",
	}
	for _, path := range tricks {
		loop(func(int) {
			resp, body, err := get(http.MethodGet, path, "containerd/1.6.8")
			if err != nil {
				return
			}
			checkType(path, resp)
			if strings.Contains(string(body), "metadata") {
				fail("%s: the client got the inward redirect's body", path)
			}
			if len(body) > maxBlob {
				fail("%s: the client got %d bytes, beyond maxBlobSize", path, len(body))
			}
			if strings.Contains(path, "bomb/wide") {
				wideAsked.Add(1)
			}
		})
	}
	// The operator's pages, with what the hostile images put in them.
	loop(func(n int) {
		path := []string{"/api/v1/rewrites", "/status"}[n%2]
		resp, body, err := get(http.MethodGet, path, "")
		if err != nil {
			return
		}
		checkType(path, resp)
		peakReport.Store(max(peakReport.Load(), int64(len(body))))
		time.Sleep(50 * time.Millisecond)
	})
	// Made-up methods.
	loop(func(n int) {
		if resp, _, err := get(fmt.Sprintf("X%06d", n), "/v2/", ""); err == nil && resp.StatusCode < 400 {
			fail("method X%06d answered %d", n, resp.StatusCode)
		}
		spam.Add(1)
	})
	<-runCtx.Done()
	wg.Wait()
	// A download the hostile upstream drips never reaches the good
	// upstream's clients: they get the good bytes, whole and at once.
	func() {
		drip, stopDrip := context.WithTimeout(ctx, time.Second)
		defer stopDrip()
		getIn(drip, http.MethodGet, "/v2/evil/x/blobs/"+coldDigest.String()+"?ns=hostile.example", "containerd/2.3.4")
		fetch, stopFetch := context.WithTimeout(ctx, time.Minute)
		defer stopFetch()
		resp, body, err := getIn(fetch, http.MethodGet, "/v2/good/cold/blobs/"+coldDigest.String(), "containerd/2.3.4")
		switch {
		case err != nil:
			t.Errorf("the good upstream's blob, while the hostile one drips it: %v", err)
		case resp.StatusCode != http.StatusOK || digest.FromBytes(body) != coldDigest:
			t.Errorf("the good upstream's blob, while the hostile one drips it: %d, %d bytes, want it whole", resp.StatusCode, len(body))
		}
	}()

	// Then every hostile image is pulled to the end, and the pages show
	// what the scans recorded.
	settle, stop := context.WithTimeout(ctx, 5*time.Minute)
	defer stop()
	for _, ref := range hostileTags {
		repo, tag, _ := strings.Cut(ref, ":")
		resp, _, err := getIn(settle, http.MethodGet, "/v2/"+repo+"/manifests/"+tag+"?ns=hostile.example", "containerd/1.6.8")
		if err != nil {
			t.Fatalf("hostile image %s, pulled to the end: %v", ref, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("hostile image %s, pulled to the end: %s", ref, resp.Status)
		}
	}
	for _, path := range []string{"/api/v1/rewrites", "/status"} {
		resp, body, err := getIn(settle, http.MethodGet, path, "")
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
		peakReport.Store(max(peakReport.Load(), int64(len(body))))
	}
	sampleRSS()
	seriesAfter := countSeries(scrape(t, proxyURL))

	fmt.Printf("\nHOSTILE IMAGES AND UPSTREAM: %s\n", duration)
	fmt.Printf("  requests:      %d good pulls (%d fixed for 1.6.8), %d hostile image pulls, %d wide index pulls, %d made-up methods\n",
		goodServed.Load(), goodFixed.Load(), hostileAsked.Load(), wideAsked.Load(), spam.Load())
	fmt.Printf("  regnorm RSS:   %d MiB idle, %d MiB peak (+%d MiB, bound +%d MiB)\n",
		idleRSS>>10, peakRSS.Load()>>10, (peakRSS.Load()-idleRSS)>>10, rssBound>>10)
	fmt.Printf("  largest page:  %d KiB of /api/v1/rewrites or /status\n", peakReport.Load()>>10)
	fmt.Printf("  metric series: %d before, %d after\n", seriesBefore, seriesAfter)
	fmt.Printf("  upstream:      %d child manifest GETs for the wide index, %d inward requests\n\n", wideChildGets.Load(), inward.Load())

	for _, f := range failures {
		t.Error(f)
	}
	if goodFixed.Load() == 0 {
		t.Error("the good image containerd 1.6.8 needs fixed was never served: work waiting on the hostile upstream held up the rest")
	}
	if goodServed.Load() == 0 || hostileAsked.Load() == 0 || wideAsked.Load() == 0 || spam.Load() == 0 {
		t.Error("a kind of client made no request: the test measured less than it says")
	}
	if grown := peakRSS.Load() - idleRSS; grown > rssBound {
		t.Errorf("regnorm's memory grew by %d MiB, bound %d MiB", grown>>10, rssBound>>10)
	}
	if peakReport.Load() > reportBound {
		t.Errorf("a report or page of %d bytes, bound %d", peakReport.Load(), reportBound)
	}
	if n := inward.Load(); n != 0 {
		t.Errorf("regnorm followed %d redirects inward", n)
	}
	// Each wide index pull may cost a small budget of child reads, never
	// one for each of its thousand children.
	if got, bound := wideChildGets.Load(), wideAsked.Load()*32; got > bound {
		t.Errorf("%d child manifest GETs for %d pulls of the wide index, want at most %d", got, wideAsked.Load(), bound)
	}
	if grown := seriesAfter - seriesBefore; grown > 200 {
		t.Errorf("made-up requests added %d metric series", grown)
	}
}

// hostileUpstream relays to the registry at target, except for the tricks
// TestHostileImagesAndUpstream plays: goodManifest served as an index, an
// HTML page as a manifest, redirects to inward, a blob of unknown length
// that never ends, any blob of evil/x a byte at a time, blobs (the paths in
// stalled) it never sends, and the index wide whose children it does not
// have (it counts the GETs of those).
func hostileUpstream(t *testing.T, target string, goodManifest, wide []byte, stalled map[string]bool, stalledGets *atomic.Int64, inward string, wideChildGets *atomic.Int64) http.Handler {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	relay := httputil.NewSingleHostReverseProxy(u)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path := r.URL.Path; {
		case strings.HasPrefix(path, "/v2/good/app/manifests/"):
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(goodManifest).String())
			w.Write(goodManifest)
		case strings.HasPrefix(path, "/v2/trap/page/manifests/"):
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, `<html><body><script>alert(document.domain)</script></body></html>`)
		case strings.HasPrefix(path, "/v2/trap/redirect/"):
			http.Redirect(w, r, inward+"/latest/meta-data/"+strings.TrimPrefix(path, "/v2/trap/redirect/"), http.StatusTemporaryRedirect)
		case strings.HasPrefix(path, "/v2/evil/x/blobs/"):
			// Any digest, a byte at a time: a download that is never done.
			w.Header().Set("Content-Length", "1000000")
			w.WriteHeader(http.StatusOK)
			for range 1000 {
				if _, err := w.Write([]byte("A")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		case stalled[path]:
			stalledGets.Add(1)
			<-r.Context().Done() // headers and all: nothing, until regnorm gives up
		case strings.HasPrefix(path, "/v2/trap/endless/blobs/"):
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			chunk := make([]byte, 256<<10)
			// Bounded all the same: 1 GiB, then the upstream gives up.
			for range 4096 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case path == "/v2/bomb/wide/manifests/v1":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(wide).String())
			w.Write(wide)
		case strings.HasPrefix(path, "/v2/bomb/wide/manifests/sha256:"):
			wideChildGets.Add(1)
			relay.ServeHTTP(w, r)
		default:
			relay.ServeHTTP(w, r)
		}
	})
}

// rawImage is an image of one layer blob of mediaType, whatever it holds.
func rawImage(t *testing.T, mediaType string, layer []byte) regtest.Image {
	t.Helper()
	config, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("unknown")}},
	})
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers: []ocispec.Descriptor{{MediaType: mediaType, Digest: digest.FromBytes(layer), Size: int64(len(layer))}},
	}
	manifest, _ := json.Marshal(m)
	return regtest.Image{Layers: [][]byte{layer}, Config: config, Manifest: manifest, ManifestDigest: digest.FromBytes(manifest)}
}

// countSeries counts the samples of a scrape of regnorm's own families.
func countSeries(scraped string) int {
	return len(regexp.MustCompile(`(?m)^regnorm_`).FindAllStringIndex(scraped, -1))
}
