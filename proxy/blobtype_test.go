package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/internal/regtest"
)

// typedBlob is a blob pushed upstream and the Content-Type /blobs/ must send
// it with.
type typedBlob struct {
	name     string
	content  []byte
	dgst     digest.Digest
	wantType string
}

// pushTypedBlobs pushes an index of a Docker and an OCI image to repo
// (tagged "multi"), and each manifest's bytes as a blob too: an upstream
// that answers /blobs/ for a manifest's digest, as Docker Hub and
// distribution with its descriptor cache do (distribution#4812). It
// returns the manifests, a config and a layer, and JSON blobs that name a
// manifest type their members contradict.
func pushTypedBlobs(t *testing.T, h *harness, repo string) []typedBlob {
	t.Helper()
	docker := h.push(t, repo, "docker", regtest.ImageOptions{}, oneFile)
	oci := h.push(t, repo, "oci", regtest.ImageOptions{LayerMediaType: ocispec.MediaTypeImageLayerGzip}, oneFile)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: docker.ManifestDigest, Size: int64(len(docker.Manifest)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: ocispec.MediaTypeImageManifest, Digest: oci.ManifestDigest, Size: int64(len(oci.Manifest)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
	}}
	index.SchemaVersion = 2
	rawIndex, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.reg.Client().PushManifest(context.Background(), repo, "multi", ocispec.MediaTypeImageIndex, rawIndex); err != nil {
		t.Fatal(err)
	}
	blobs := []typedBlob{
		{name: "index", content: rawIndex, wantType: ocispec.MediaTypeImageIndex},
		{name: "OCI manifest", content: oci.Manifest, wantType: ocispec.MediaTypeImageManifest},
		{name: "Docker manifest", content: docker.Manifest, wantType: regtest.MediaTypeDockerManifest},
		{name: "config", content: docker.Config, wantType: mediatype.OctetStream},
		{name: "layer", content: docker.Layers[0], wantType: mediatype.OctetStream},
		// What /manifests/ refuses as contradicting its type.
		{name: "index type with layers", content: []byte(`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageIndex + `","manifests":[],"layers":[]}`),
			wantType: mediatype.OctetStream},
		{name: "Docker manifest type with manifests", content: []byte(`{"schemaVersion":2,"mediaType":"` + regtest.MediaTypeDockerManifest + `","config":{},"manifests":[]}`),
			wantType: mediatype.OctetStream},
	}
	for i, b := range blobs {
		blobs[i].dgst = digest.FromBytes(b.content)
		if b.name != "config" && b.name != "layer" {
			h.pushBlob(t, repo, b.content)
		}
	}
	return blobs
}

// checkBlobAnswer checks that method on /blobs/ answered b as b: its
// type, digest, length, and (GET) bytes.
func checkBlobAnswer(t *testing.T, method string, b typedBlob, r response) {
	t.Helper()
	switch {
	case r.status != http.StatusOK:
		t.Errorf("%s /blobs/ of the %s: %d %s", method, b.name, r.status, r.body)
	case r.header.Get("Content-Type") != b.wantType:
		t.Errorf("%s /blobs/ of the %s: sent as %q, want %q", method, b.name, r.header.Get("Content-Type"), b.wantType)
	case r.header.Get("Docker-Content-Digest") != b.dgst.String():
		t.Errorf("%s /blobs/ of the %s: digest %s", method, b.name, r.header.Get("Docker-Content-Digest"))
	case r.header.Get("Content-Length") != strconv.Itoa(len(b.content)):
		t.Errorf("%s /blobs/ of the %s: Content-Length %s, want %d", method, b.name, r.header.Get("Content-Length"), len(b.content))
	case method == http.MethodGet && !bytes.Equal(r.body, b.content):
		t.Errorf("GET /blobs/ of the %s: other bytes", b.name)
	}
}

// TestManifestTypeThroughBlobs: containerd's resolver, when HEAD
// /manifests/<digest> fails, asks HEAD (then GET) /blobs/<digest> and keeps
// the Content-Type as the image's type for good (containerd#13007). A
// manifest's digest on /blobs/ is sent as the manifest's own type, whether
// it was asked for there before or after a pull through /manifests/, by
// HEAD or GET first: the type is a function of the blob's verified bytes.
// A config and a layer, and JSON that names a manifest type its members
// contradict, stay application/octet-stream.
func TestManifestTypeThroughBlobs(t *testing.T) {
	t.Parallel()
	orders := []struct {
		name string
		// manifestsFirst pulls every manifest through /manifests/ first;
		// else first is the method that asks /blobs/ first.
		manifestsFirst bool
		first          string
	}{
		{"HEAD on /blobs/ first", false, http.MethodHead},
		{"GET on /blobs/ first", false, http.MethodGet},
		{"pulled through /manifests/ first", true, http.MethodHead},
	}
	for _, tt := range orders {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			blobs := pushTypedBlobs(t, h, "library/app")
			if tt.manifestsFirst {
				for _, b := range blobs[:3] {
					r := h.do(t, http.MethodGet, "/v2/library/app/manifests/"+b.dgst.String()+"?ns=docker.io", containerdAccept)
					if r.status != http.StatusOK || r.header.Get("Content-Type") != b.wantType {
						t.Fatalf("GET /manifests/ of the %s: %d %s", b.name, r.status, r.header.Get("Content-Type"))
					}
				}
			}
			second := http.MethodGet
			if tt.first == http.MethodGet {
				second = http.MethodHead
			}
			// Cold (nothing on /blobs/ yet), then warm, then after a
			// restart (the cache read anew).
			for round := range 3 {
				if round == 2 {
					h.restart(t)
				}
				for _, b := range blobs {
					for _, method := range []string{tt.first, second} {
						r := h.do(t, method, "/v2/library/app/blobs/"+b.dgst.String()+"?ns=docker.io", nil)
						checkBlobAnswer(t, method, b, r)
					}
				}
			}
		})
	}
}

// TestManifestThroughBlobsRefusedAsABlob: a digest no blob of the
// repository has is refused on /blobs/ as a blob (BLOB_UNKNOWN), also when
// it is a manifest regnorm holds for another repository and the cache has
// its bytes as a blob: /blobs/ tells nothing of what others pulled.
func TestManifestThroughBlobsRefusedAsABlob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	blobs := pushTypedBlobs(t, h, "library/app")
	h.push(t, "library/other", "v1", regtest.ImageOptions{}, oneFile)
	index := blobs[0]
	for _, repo := range []string{"library/app", "library/other"} {
		// Cached, as a manifest and as a blob, through library/app.
		r := h.do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+index.dgst.String()+"?ns=docker.io", nil)
		if repo == "library/app" {
			checkBlobAnswer(t, http.MethodGet, index, r)
			h.do(t, http.MethodGet, "/v2/library/app/manifests/multi?ns=docker.io", containerdAccept)
			continue
		}
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := h.do(t, method, "/v2/"+repo+"/blobs/"+index.dgst.String()+"?ns=docker.io", nil)
			if r.status != http.StatusNotFound {
				t.Fatalf("%s /blobs/ of library/app's index in %s: %d, want 404", method, repo, r.status)
			}
			if method == http.MethodGet {
				if code := r.ociError(t); code != "BLOB_UNKNOWN" {
					t.Errorf("GET in %s: %s, want BLOB_UNKNOWN", repo, code)
				}
			}
		}
	}
	unknown := digest.FromString("nobody has this")
	r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+unknown.String()+"?ns=docker.io", nil)
	if r.status != http.StatusNotFound || r.ociError(t) != "BLOB_UNKNOWN" {
		t.Fatalf("an unknown digest: %d %s", r.status, r.body)
	}
}

// TestSmallBlobRanges: a small blob (held in memory to be typed) still
// answers ranges and conditional requests, cold and cached.
func TestSmallBlobRanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	blobs := pushTypedBlobs(t, h, "library/app")
	for _, b := range []typedBlob{blobs[0], blobs[4]} { // the index, the layer
		path := "/v2/library/app/blobs/" + b.dgst.String() + "?ns=docker.io"
		for _, state := range []string{"cold", "cached"} {
			r := h.do(t, http.MethodGet, path, http.Header{"Range": {"bytes=5-14"}})
			wantRange := fmt.Sprintf("bytes 5-14/%d", len(b.content))
			if r.status != http.StatusPartialContent || r.header.Get("Content-Range") != wantRange || !bytes.Equal(r.body, b.content[5:15]) {
				t.Errorf("%s %s, bytes=5-14: %d %q %q", state, b.name, r.status, r.header.Get("Content-Range"), r.body)
			}
			if got := r.header.Get("Content-Type"); got != b.wantType {
				t.Errorf("%s %s, a range: sent as %q, want %q", state, b.name, got, b.wantType)
			}
			r = h.do(t, http.MethodGet, path, http.Header{"Range": {"bytes=10-"}})
			if r.status != http.StatusPartialContent || !bytes.Equal(r.body, b.content[10:]) {
				t.Errorf("%s %s, bytes=10-: %d", state, b.name, r.status)
			}
			r = h.do(t, http.MethodGet, path, http.Header{"If-None-Match": {`"` + b.dgst.String() + `"`}})
			if r.status != http.StatusNotModified {
				t.Errorf("%s %s, If-None-Match its digest: %d", state, b.name, r.status)
			}
		}
	}
}

// TestColdSmallBlobDownloadedOnce: many clients asking at once for a
// small blob nobody fetched yet, HEAD and GET alike, cost one upstream
// download, and every one gets the manifest's type.
func TestColdSmallBlobDownloadedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	blobs := pushTypedBlobs(t, h, "library/app")
	index := blobs[0]
	var gets atomic.Int64
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+index.dgst.String()) {
			gets.Add(1)
		}
		h.front.relay(w, r)
	})
	var wg sync.WaitGroup
	answers := make([]response, 16)
	for i := range answers {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodHead
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = h.do(t, method, "/v2/library/app/blobs/"+index.dgst.String()+"?ns=docker.io", nil)
		}()
	}
	wg.Wait()
	for i, r := range answers {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodHead
		}
		checkBlobAnswer(t, method, index, r)
	}
	if n := gets.Load(); n != 1 {
		t.Fatalf("upstream GETs of the index's blob: %d, want 1", n)
	}
}

// TestStalledReadersHoldNoTypingRoom: a client that asks for blobs that may
// be manifests and never reads the answer holds nothing another client
// needs. Their bytes are held only while they are typed, never while a
// client sets the pace: forty such clients, each on its own blob of the
// largest size a manifest can have and never typed before (so that each is
// typed: forty times what typing may hold at once, were it not given
// back), leave another client's index to be answered as itself.
func TestStalledReadersHoldNoTypingRoom(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	blobs := pushTypedBlobs(t, h, "library/app")
	u, err := url.Parse(h.url)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		large := regtest.RandomBytes(mediatype.MaxManifestSize)
		path := "/v2/library/app/blobs/" + h.pushBlob(t, "library/app", large).String()
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// The smallest receive buffer the kernel allows: the server's
		// writes stop after a few kilobytes.
		conn.(*net.TCPConn).SetReadBuffer(1)
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, u.Host); err != nil {
			t.Fatal(err)
		}
		// Its headers come only once the blob was typed: read them, and
		// then nothing more. (The deadline only turns a hang into a
		// failure: typing room still held would keep the next one from
		// its headers.)
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.Contains(line, " 200 ") {
			t.Fatalf("stalled client %d: %q, %v", i, line, err)
		}
	}
	for _, b := range blobs[:1] { // the index, never typed before
		r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+b.dgst.String(), nil)
		checkBlobAnswer(t, http.MethodGet, b, r)
	}
}

// slowReads is a storage driver whose reads of paths holding sub wait a
// little and are counted: long enough that clients that ask together are
// all waiting on the first read.
type slowReads struct {
	driver.StorageDriver
	sub   atomic.Value // string
	reads atomic.Int64
}

func (d *slowReads) Reader(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	if s, _ := d.sub.Load().(string); s != "" && strings.Contains(path, s) {
		d.reads.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
	return d.StorageDriver.Reader(ctx, path, offset)
}

// TestBlobTypedOnceForAll: after a restart (types forgotten), clients that
// ask for one small cached blob together cost one read to learn its type,
// and then each its own read to be sent: not a typing read each (on S3, a
// GET each that a client's HEAD or GET makes).
func TestBlobTypedOnceForAll(t *testing.T) {
	t.Parallel()
	d := &slowReads{StorageDriver: inmemory.New()}
	h := newHarness(t, harnessOptions{store: cache.New(d), tagTTL: time.Hour})
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	h.pullAll(t, "library/app", "v1")
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	config := m.Config.Digest
	h.restart(t)
	d.sub.Store(config.Encoded())
	const n = 16
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if r := h.do(t, http.MethodGet, "/v2/library/app/blobs/"+config.String(), nil); r.status != http.StatusOK ||
				r.header.Get("Content-Type") != mediatype.OctetStream || digest.FromBytes(r.body) != config {
				t.Errorf("GET of the config: %d %s", r.status, r.header.Get("Content-Type"))
			}
		})
	}
	wg.Wait()
	if got := d.reads.Load(); got != n+1 {
		t.Errorf("%d clients at once after a restart: %d reads of the config, want %d (one to type it, one each to send it)", n, got, n+1)
	}
}
