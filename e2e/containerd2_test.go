//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// exchange is one request a wireLog relayed and what regnorm answered.
type exchange struct {
	method, path, rangeHeader string
	status                    int
	contentRange              string
}

// wireLog is a reverse proxy in front of regnorm that records every request
// containerd sends it. Bodies pass through untouched (no compression).
type wireLog struct {
	url string
	mu  sync.Mutex
	log []exchange
}

// relayTo is a reverse proxy to target that passes bodies through
// untouched (no compression) and shows seen each answer it relays.
func relayTo(t *testing.T, target string, seen func(*http.Response)) *httputil.ReverseProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = transport
	rp.ModifyResponse = func(resp *http.Response) error {
		seen(resp)
		return nil
	}
	return rp
}

func startWireLog(t *testing.T, target string) *wireLog {
	t.Helper()
	w := &wireLog{}
	rp := relayTo(t, target, func(resp *http.Response) {
		w.add(resp.Request, resp.StatusCode, resp.Header.Get("Content-Range"))
	})
	rp.ErrorHandler = func(rw http.ResponseWriter, r *http.Request, err error) {
		w.add(r, http.StatusBadGateway, "")
		http.Error(rw, err.Error(), http.StatusBadGateway)
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	w.url = srv.URL
	return w
}

func (w *wireLog) add(r *http.Request, status int, contentRange string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = append(w.log, exchange{method: r.Method, path: r.URL.Path, rangeHeader: r.Header.Get("Range"), status: status, contentRange: contentRange})
}

// since returns the exchanges after the first n.
func (w *wireLog) since(n int) []exchange {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]exchange(nil), w.log[n:]...)
}

func (w *wireLog) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.log)
}

// startRegnormFor is startRegnorm with one upstream named name, as
// containerd names a registry in ns (e.g. 127.0.0.1:PORT), so that images
// can be pulled by that registry's own name through a mirror.
func startRegnormFor(t *testing.T, name, upstreamURL string) string {
	t.Helper()
	return startRegnormForWith(t, name, upstreamURL, "")
}

// startRegnormForWith is startRegnormFor with more configuration (YAML
// top-level keys).
func startRegnormForWith(t *testing.T, name, upstreamURL, extraYAML string) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
logFormat: json
tagTTL: 1h
spoolDir: %s
defaultUpstream: %q
upstreams:
- name: %q
  url: %s
cache:
  driver: filesystem
  filesystem:
    rootDirectory: %s
%s`, addr, dir, name, name, upstreamURL, filepath.Join(dir, "cache"), extraYAML)
	path := filepath.Join(dir, "regnorm.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, "regnorm", regnormBin, "--config", path)
	waitHTTP(t, "http://"+addr+"/healthz")
	return "http://" + addr
}

// TestContainerd2ConfigPathList reproduces the containerd 2.x trap
// (containerd#12415, #12636): CRI pulls go through the transfer service,
// which reads config_path as one directory. With the list
// "<dir>:/etc/docker/certs.d" the mirror in <dir> is never asked: the
// upstream serves the octet-stream image, whose layers are never fetched,
// and it fails as with no mirror. "<dir>" alone pulls through regnorm. The
// same list works where the local pull path splits it: 1.6.20, and 2.3.4
// with use_local_image_pull.
func TestContainerd2ConfigPathList(t *testing.T) {
	registryURL, _ := startRegistry(t)
	legacy := pushHello(t, registryURL, "library/legacy", "v1", legacyConfig)
	// The image is pulled by its registry's own name (a docker.io image that
	// missed the mirror would go to Docker Hub), through a relay that shows
	// what containerd asked the upstream for.
	upstream := startWireLog(t, registryURL)
	upstreamHost := strings.TrimPrefix(upstream.url, "http://")
	mirror := startWireLog(t, startRegnormFor(t, upstreamHost, registryURL))
	ref := upstreamHost + "/library/legacy:v1"
	list := hostsDirToken + ":/etc/docker/certs.d"

	for _, tt := range []struct {
		name       string
		kind       containerdKind
		configPath string
		config     string
		viaRegnorm bool
	}{
		{"2.3.4 one directory", containerd234, hostsDirToken, "", true},
		{"2.3.4 a list", containerd234, list, "", false},
		{"2.3.4 a list with use_local_image_pull", containerd234, list,
			"\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n", true},
		{"1.6.20 a list", containerd1620, list, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			toUpstream, toMirror := upstream.len(), mirror.len()
			node := startContainerdVersion(t, tt.kind, containerdOptions{
				Hosts:      map[string]string{upstreamHost: mirrorHosts(upstream.url, mirror.url)},
				ConfigPath: tt.configPath,
				Config:     tt.config,
			})
			if !tt.viaRegnorm {
				octetStreamFails(t, node, ref, legacy)
				if got := mirror.since(toMirror); len(got) != 0 {
					t.Fatalf("%d requests reached regnorm, want 0: %+v", len(got), got)
				}
				// Upstream: the manifest and the config, never a layer.
				got := upstream.since(toUpstream)
				if countExchanges(got, "", "/manifests/") == 0 {
					t.Fatalf("the manifest was not asked of the upstream: %+v", got)
				}
				config := "/blobs/" + digest.FromBytes(legacy.Config).String()
				if n := countExchanges(got, http.MethodGet, "/blobs/"); n != 1 || countExchanges(got, http.MethodGet, config) != 1 {
					t.Fatalf("blob GETs upstream: %+v, want the config alone", got)
				}
				t.Logf("%d requests upstream, 0 to regnorm", len(got))
				return
			}
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if got := node.repoDigest(t, ref); got == legacy.ManifestDigest.String() {
				t.Fatalf("pulled under the original digest %s", got)
			}
			got := mirror.since(toMirror)
			if countExchanges(got, http.MethodHead, "/manifests/") == 0 || countExchanges(got, http.MethodGet, "/blobs/") != 1+len(legacy.Layers) {
				t.Fatalf("requests to regnorm: %+v, want the manifest HEAD, the config and every layer", got)
			}
			if n := len(upstream.since(toUpstream)); n != 0 {
				t.Fatalf("%d requests went upstream around the mirror", n)
			}
			t.Logf("%d requests to regnorm, 0 upstream", len(got))
		})
	}
}

// countExchanges counts the exchanges of method (any when empty) whose path
// contains pathPart.
func countExchanges(log []exchange, method, pathPart string) int {
	n := 0
	for _, e := range log {
		if (method == "" || e.method == method) && strings.Contains(e.path, pathPart) {
			n++
		}
	}
	return n
}

// TestContainerd2ParallelRanges: with the transfer service's
// concurrent_layer_fetch_buffer set, containerd 2.3.4 fetches a blob larger
// than that buffer in up to max_concurrent_downloads (3) parallel requests,
// each "Range: bytes=N-" read for one buffer and then dropped. regnorm
// answers each with 206 and the right Content-Range, from a cold cache
// (fetching each blob upstream once) and from a warm one, and the image
// runs. With the default settings every blob is one GET without Range.
func TestContainerd2ParallelRanges(t *testing.T) {
	const chunk = 1 << 20
	registryURL, _ := startRegistry(t)
	bin, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	// Random bytes do not compress: layers of 6 MiB and 3.5 MiB.
	img, err := regtest.BuildImage(regtest.ImageOptions{Entrypoint: []string{"/hello"}},
		[]regtest.File{{Name: "hello", Mode: 0o755, Content: bin}},
		[]regtest.File{{Name: "a", Content: regtest.RandomBytes(6 << 20)}},
		[]regtest.File{{Name: "b", Content: regtest.RandomBytes(7 << 19)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), "library/big", "v1", img); err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{digest.FromBytes(img.Config).String(): int64(len(img.Config))}
	for _, layer := range img.Layers {
		sizes[digest.FromBytes(layer).String()] = int64(len(layer))
	}
	const ref = "docker.io/library/big:v1"

	for _, tt := range []struct {
		name   string
		config string
		ranged bool
	}{
		{"default settings", "", false},
		{"concurrent_layer_fetch_buffer", fmt.Sprintf("\n[plugins.'io.containerd.transfer.v1.local']\n  concurrent_layer_fetch_buffer = %d\n", chunk), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			upstream := startWireLog(t, registryURL)
			proxyURL, _ := startRegnorm(t, upstream.url, "")
			wire := startWireLog(t, proxyURL)
			ranged := 0
			for _, cache := range []string{"cold cache", "warm cache"} {
				before, upBefore := wire.len(), upstream.len()
				node := startContainerdVersion(t, containerd234, containerdOptions{Mirror: wire.url, Config: tt.config})
				if _, err := node.pull(t, ref); err != nil {
					t.Fatalf("%s: pull through regnorm: %v", cache, err)
				}
				if got := node.run(t, ref); got != "hello from regnorm e2e" {
					t.Fatalf("%s: container printed %q", cache, got)
				}
				if got := node.repoDigest(t, ref); got != img.ManifestDigest.String() {
					t.Fatalf("%s: pulled %s, upstream digest %s", cache, got, img.ManifestDigest)
				}
				n := checkBlobRanges(t, wire.since(before), sizes, chunk, tt.ranged)
				ranged += n
				t.Logf("%s: %d ranged blob GETs", cache, n)
				// Upstream, regnorm fetched each blob once, whole, however
				// many ranges were asked of it; then none.
				up := upstream.since(upBefore)
				for dgst := range sizes {
					want := 1
					if cache == "warm cache" {
						want = 0
					}
					if got := countExchanges(up, http.MethodGet, "/blobs/"+dgst); got != want {
						t.Fatalf("%s: blob %s fetched upstream %d times, want %d: %+v", cache, dgst, got, want, up)
					}
				}
				for _, e := range up {
					if e.rangeHeader != "" {
						t.Fatalf("%s: regnorm sent a ranged GET upstream: %+v", cache, e)
					}
				}
			}
			if tt.ranged {
				// regnorm's own count agrees with what the relay saw.
				if n := metric(t, proxyURL, "regnorm_http_requests_total", `route="blob"`, `method="GET"`, `code="206"`); int(n) != ranged {
					t.Fatalf("regnorm counted %v blob GETs answered 206, the relay %d", n, ranged)
				}
			}
		})
	}
}

// checkBlobRanges checks the blob GETs of one pull, blobs being every blob
// of the image with its size. Unranged, each blob is one GET without Range,
// answered 200. Ranged, each blob is read in chunks: its offsets are 0,
// chunk, 2·chunk... up to its size, each answered 206 with the Content-Range
// that offset asks for. It returns how many ranged GETs it saw.
func checkBlobRanges(t *testing.T, log []exchange, blobs map[string]int64, chunk int64, ranged bool) int {
	t.Helper()
	offsets := map[string]map[int64]bool{}
	n := 0
	for _, e := range log {
		i := strings.LastIndex(e.path, "/blobs/")
		if e.method != http.MethodGet || i < 0 {
			continue
		}
		dgst := e.path[i+len("/blobs/"):]
		size, ok := blobs[dgst]
		if !ok {
			t.Fatalf("GET of a blob not in the image: %+v", e)
		}
		if !ranged {
			if e.rangeHeader != "" || e.status != http.StatusOK {
				t.Fatalf("GET %s: Range %q answered %d, want one whole GET answered 200", dgst, e.rangeHeader, e.status)
			}
			offsets[dgst] = map[int64]bool{0: true}
			continue
		}
		var off int64
		if _, err := fmt.Sscanf(e.rangeHeader, "bytes=%d-", &off); err != nil || e.rangeHeader != fmt.Sprintf("bytes=%d-", off) {
			t.Fatalf("GET %s: Range %q, want bytes=N-", dgst, e.rangeHeader)
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", off, size-1, size); e.status != http.StatusPartialContent || e.contentRange != want {
			t.Fatalf("GET %s Range %s: answered %d Content-Range %q, want 206 %q", dgst, e.rangeHeader, e.status, e.contentRange, want)
		}
		if offsets[dgst] == nil {
			offsets[dgst] = map[int64]bool{}
		}
		offsets[dgst][off] = true
		n++
	}
	for dgst, size := range blobs {
		want := map[int64]bool{0: true}
		if ranged {
			for off := chunk; off < size; off += chunk {
				want[off] = true
			}
		}
		if fmt.Sprint(offsets[dgst]) != fmt.Sprint(want) {
			t.Fatalf("blob %s (%d bytes): fetched at offsets %v, want %v", dgst, size, offsets[dgst], want)
		}
	}
	return n
}
