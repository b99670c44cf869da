package proxy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
)

// hostileLayer is a layer blob for TestHostileLayers.
type hostileLayer struct {
	name        string
	blob        []byte
	wantSkipped string // the layers_skipped_total reason
}

// TestHostileLayers: a decompression bomb and a broken gzip are left
// untouched after a bounded read: the image is served as upstream has it,
// and the layer blob byte for byte.
func TestHostileLayers(t *testing.T) {
	t.Parallel()
	for _, tt := range []hostileLayer{
		{"decompression bomb", bomb(t, 64<<20), "too-large"},
		{"invalid gzip", append([]byte{0x1f, 0x8b, 0x08, 0x00}, regtest.RandomBytes(4096)...), "not-tar"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{maxLayerSize: 8 << 20})
			manifest := pushRawImage(t, h, "library/hostile", "v1", tt.blob)

			r := h.do(t, http.MethodGet, "/v2/library/hostile/manifests/v1", containerdAccept)
			if r.status != http.StatusOK || !bytes.Equal(r.body, manifest) {
				t.Fatalf("got %d %s, want the manifest untouched", r.status, r.body)
			}
			if got := h.metric(t, "regnorm_layers_skipped_total", `reason="`+tt.wantSkipped+`"`); got != 1 {
				t.Errorf("layers skipped for %s: %v, want 1", tt.wantSkipped, got)
			}
			r = h.do(t, http.MethodGet, "/v2/library/hostile/blobs/"+digest.FromBytes(tt.blob).String(), nil)
			if r.status != http.StatusOK || !bytes.Equal(r.body, tt.blob) {
				t.Fatalf("layer: got %d, %d bytes; want it byte for byte", r.status, len(r.body))
			}
		})
	}
}

// TestHostileManifests: documents that are invalid, ambiguous or too big to
// normalize are passed through untouched, or refused with a clear error
// when they are not manifests at all (mediatype.Of), and never cost a blob
// fetch.
func TestHostileManifests(t *testing.T) {
	t.Parallel()
	cfg := digest.FromString("config")
	desc := func(mt string, d digest.Digest) string {
		return fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":6}`, mt, d)
	}
	octet := desc("application/octet-stream", cfg)
	layer := desc(regtest.MediaTypeDockerLayer, digest.FromString("layer"))
	manifest := func(config string, layers ...string) string {
		return `{"schemaVersion":2,"mediaType":"` + regtest.MediaTypeDockerManifest + `","config":` + config + `,"layers":[` + strings.Join(layers, ",") + `]}`
	}
	thousands := make([]string, 5000)
	for i := range thousands {
		thousands[i] = desc(regtest.MediaTypeDockerLayer, digest.FromString(fmt.Sprint(i)))
	}
	tests := []struct {
		name, body string
		// refused: not a manifest (mediatype.Of), so neither served nor
		// cached, and 502 MANIFEST_INVALID; else served untouched.
		refused bool
	}{
		{"deeply nested", `{"schemaVersion":2,"config":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `,"layers":[]}`, true},
		{"duplicate keys", `{"schemaVersion":2,"mediaType":"` + regtest.MediaTypeDockerManifest + `","config":` + octet + `,"config":` + octet + `,"layers":[` + layer + `]}`, true},
		{"invalid digest", manifest(desc("application/octet-stream", "sha256:zz"), layer), false},
		{"invalid size", manifest(`{"mediaType":"application/octet-stream","digest":"`+cfg.String()+`","size":-5}`, layer), false},
		{"not JSON", "\x00\x01 not json", true},
		{"5000 layers", manifest(octet, thousands...), false},
		{"oversized config", manifest(`{"mediaType":"application/octet-stream","digest":"`+cfg.String()+`","size":1000000000}`, layer), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			var blobRequests atomic.Int64
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/blobs/") {
					blobRequests.Add(1)
					http.Error(w, "no", http.StatusNotFound)
					return
				}
				w.Header().Set("Content-Type", regtest.MediaTypeDockerManifest)
				w.Write([]byte(tt.body))
			})
			r := h.do(t, http.MethodGet, "/v2/library/hostile/manifests/v1", containerdAccept)
			if tt.refused {
				if r.status != http.StatusBadGateway || r.ociError(t) != "MANIFEST_INVALID" {
					t.Fatalf("got %d (%.200s), want 502 MANIFEST_INVALID", r.status, r.body)
				}
				if _, err := h.store.GetManifest(context.Background(), digest.FromString(tt.body)); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("the refused document is in the cache: %v", err)
				}
				return
			}
			if r.status != http.StatusOK || string(r.body) != tt.body {
				t.Fatalf("got %d (%.200s), want the document untouched", r.status, r.body)
			}
			if got, want := r.header.Get("Docker-Content-Digest"), digest.FromString(tt.body).String(); got != want {
				t.Errorf("digest header %s, want %s", got, want)
			}
			if n := blobRequests.Load(); n != 0 {
				t.Errorf("%d blob requests for a document that cannot be normalized", n)
			}
		})
	}
}

// bomb is a gzip layer of one file of n zero bytes (a few kilobytes per
// 64 MiB) followed by a symlink with an xattr: without the size limit it
// would be decompressed whole and repackaged.
func bomb(t *testing.T, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: n, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for written := int64(0); written < n; written += int64(len(zeros)) {
		tw.Write(zeros)
	}
	tw.WriteHeader(&tar.Header{Name: "link", Linkname: "zeros", Typeflag: tar.TypeSymlink, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}})
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// pushRawImage pushes a Docker image with one given layer blob and returns
// its manifest.
func pushRawImage(t *testing.T, h *harness, repo, tag string, layer []byte) []byte {
	t.Helper()
	ctx := context.Background()
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + digest.FromString("unknown").String() + `"]}}`)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		regtest.MediaTypeDockerManifest, regtest.MediaTypeDockerConfig, digest.FromBytes(config), len(config),
		regtest.MediaTypeDockerLayer, digest.FromBytes(layer), len(layer)))
	c := h.reg.Client()
	for _, b := range [][]byte{layer, config} {
		if err := c.PushBlob(ctx, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushManifest(ctx, repo, tag, regtest.MediaTypeDockerManifest, manifest); err != nil {
		t.Fatal(err)
	}
	return manifest
}
