package proxy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/rewrite"
)

// TestMadeLayersAreBounded: a layer regnorm makes is bounded by its source,
// 8 times its size and 1 MiB, and by the upstreams' maxBlobSize. A zstd
// layer that repeats a 64 KiB random block (zstd finds the repeats, gzip's
// 32 KiB window cannot) would gzip, for containerd 1.4, to 250 times its
// size; a gzip layer repackaged by the symlink rule (containerd 1.6.8)
// would be larger than maxBlobSize. Each is left untouched and says why
// (metric and report); the write of the made layer stopped at its bound,
// and nothing of it stays in the cache.
func TestMadeLayersAreBounded(t *testing.T) {
	t.Parallel()
	block := regtest.RandomBytes(64 << 10)
	repeated, repeatedTar := compressed(t, "zstd", []regtest.File{{Name: "big", Content: bytes.Repeat(block, 256)}})
	text, textTar := compressed(t, "gzip", []regtest.File{
		{Name: "notes", Content: words(256 << 10)},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "notes", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}},
	})
	repacked, err := rewrite.RepackLayer(io.Discard, bytes.NewReader(text), rewrite.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if repacked.Size <= int64(len(text))+64 {
		t.Fatalf("the repackaged layer is %d bytes, its source %d: the test premise broke", repacked.Size, len(text))
	}
	for _, tt := range []struct {
		name      string
		layer     []byte
		tar       []byte // the layer uncompressed
		mediaType string
		client    string
		maxBlob   int64 // the (one) upstream's maxBlobSize; 0: the default
		bound     int64 // what the made layer may take
		reason    string
	}{
		{name: "zstd to gzip amplifies", layer: repeated, tar: repeatedTar, mediaType: ocispec.MediaTypeImageLayerZstd, client: "1.4.13",
			bound: 8*int64(len(repeated)) + 1<<20, reason: "amplifies"},
		{name: "repackaged beyond maxBlobSize", layer: text, tar: textTar, mediaType: ocispec.MediaTypeImageLayerGzip, client: "1.6.8",
			maxBlob: (int64(len(text)) + repacked.Size) / 2, bound: (int64(len(text)) + repacked.Size) / 2, reason: "too-large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			d := &countingDriver{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 50})}
			h := newHarness(t, harnessOptions{store: cache.New(d), upstream: func(c *upstream.Config) { c.MaxBlobSize = tt.maxBlob }})
			manifest := pushLayerImage(t, h, "library/made", tt.mediaType, tt.layer, tt.tar)

			for range 2 {
				r := h.do(t, http.MethodGet, "/v2/library/made/manifests/v1", containerdHeader(tt.client))
				if r.status != http.StatusOK || !bytes.Equal(r.body, manifest) {
					t.Errorf("containerd %s: got %d %.300s, want the manifest untouched", tt.client, r.status, r.body)
				}
			}
			if got := h.metric(t, "regnorm_layers_skipped_total", `reason="`+tt.reason+`"`); got != 1 {
				t.Errorf("layers skipped for %s: %v, want 1", tt.reason, got)
			}
			if got := d.largestWrite(); got > tt.bound {
				t.Errorf("%d bytes were written to one blob of the cache; the made layer's bound is %d", got, tt.bound)
			}
			entries := h.report(t)
			if len(entries) != 1 || len(entries[0].Changes) != 1 || entries[0].Changes[0].Kind != "layer-untouched" ||
				!strings.HasPrefix(strings.Join(entries[0].Changes[0].Details, ""), tt.reason+": ") {
				t.Errorf("report: %+v, want the layer untouched, for %s", entries, tt.reason)
			}
			r := h.do(t, http.MethodGet, "/v2/library/made/blobs/"+digest.FromBytes(tt.layer).String(), nil)
			if r.status != http.StatusOK || !bytes.Equal(r.body, tt.layer) {
				t.Fatalf("layer: got %d, %d bytes; want it byte for byte", r.status, len(r.body))
			}
			// Nothing of the made layer stays: the cache's blobs are the
			// layer and the config (the diff IDs rule read it), and no
			// upload is left.
			var files []string
			filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
				if err == nil && !e.IsDir() && (strings.Contains(p, "/blobs/") || strings.Contains(p, "/_uploads/")) {
					files = append(files, strings.TrimPrefix(p, root))
				}
				return err
			})
			var m ocispec.Manifest
			json.Unmarshal(manifest, &m)
			if dgst := digest.FromBytes(tt.layer); len(files) != 2 || !slices.ContainsFunc(files, func(f string) bool { return strings.Contains(f, dgst.Encoded()) }) ||
				!slices.ContainsFunc(files, func(f string) bool { return strings.Contains(f, m.Config.Digest.Encoded()) }) {
				t.Errorf("blobs and uploads in the cache: %v, want the layer %s and the config alone", files, dgst)
			}
		})
	}
}

// TestMadeLayerBoundIsOneForAllUpstreams: the cap on a made layer is the
// largest maxBlobSize of the upstreams, not its source upstream's: what is
// concluded of a layer is shared by digest, so the upstream whose client
// asks first must not decide it for the others. A layer repackaged beyond
// docker.io's own maxBlobSize, but within another upstream's, is made.
func TestMadeLayerBoundIsOneForAllUpstreams(t *testing.T) {
	t.Parallel()
	text, textTar := compressed(t, "gzip", []regtest.File{
		{Name: "notes", Content: words(256 << 10)},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "notes", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}},
	})
	repacked, err := rewrite.RepackLayer(io.Discard, bytes.NewReader(text), rewrite.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := url.Parse("http://127.0.0.1:1") // never asked
	h := newHarness(t, harnessOptions{
		upstream: func(c *upstream.Config) { c.MaxBlobSize = (int64(len(text)) + repacked.Size) / 2 },
		more:     []upstream.Config{{Name: "quay.io", URL: other, MaxBlobSize: 16 << 30}},
	})
	manifest := pushLayerImage(t, h, "library/made", ocispec.MediaTypeImageLayerGzip, text, textTar)
	got := headDigest(t, h, "/v2/library/made/manifests/v1", containerdHeader("1.6.8"))
	if got == digest.FromBytes(manifest) {
		t.Errorf("containerd 1.6.8 got the original: the layer was left untouched for docker.io's own maxBlobSize")
	}
	if n := h.metric(t, "regnorm_layers_skipped_total", `reason="too-large"`); n != 0 {
		t.Errorf("layers skipped as too large: %v, want 0", n)
	}
}

// words is n bytes of text of random words, seeded.
func words(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	vocabulary := strings.Fields("regnorm keeps what it makes within bounds of the layer its source and upstream maxBlobSize gzip zstd window")
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(vocabulary[rng.IntN(len(vocabulary))])
		b.WriteByte(" \n"[rng.IntN(2)])
	}
	return b.Bytes()[:n]
}

// compressed is a tar of files, compressed with gzip at its best (smaller
// than what regnorm's own gzip makes of it) or zstd at containerd's level,
// and the tar.
func compressed(t *testing.T, compression string, files []regtest.File) (layer, raw []byte) {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Mode: 0o644, Typeflag: f.Typeflag, Linkname: f.Linkname, Size: int64(len(f.Content)), PAXRecords: f.PAXRecords}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if f.PAXRecords != nil {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.Content)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var zw io.WriteCloser
	if compression == "gzip" {
		zw, _ = gzip.NewWriterLevel(&out, gzip.BestCompression)
	} else {
		zw, _ = zstd.NewWriter(&out, zstd.WithEncoderConcurrency(1))
	}
	zw.Write(tarBuf.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), tarBuf.Bytes()
}

// pushLayerImage pushes an OCI image of one layer, of the tar raw, and
// returns its manifest.
func pushLayerImage(t *testing.T, h *harness, repo, mediaType string, layer, raw []byte) []byte {
	t.Helper()
	config, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(raw)}}})
	manifest, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers: []ocispec.Descriptor{{MediaType: mediaType, Digest: digest.FromBytes(layer), Size: int64(len(layer))}}})
	if err := h.reg.Client().PushImage(context.Background(), repo, "v1", regtest.Image{Layers: [][]byte{layer}, Config: config, Manifest: manifest}); err != nil {
		t.Fatal(err)
	}
	return manifest
}

// countingDriver remembers the most bytes written to one file.
type countingDriver struct {
	storagedriver.StorageDriver
	mu      sync.Mutex
	largest int64
}

func (d *countingDriver) Writer(ctx context.Context, path string, append bool) (storagedriver.FileWriter, error) {
	fw, err := d.StorageDriver.Writer(ctx, path, append)
	if err != nil {
		return nil, err
	}
	return &countingWriter{FileWriter: fw, d: d}, nil
}

func (d *countingDriver) largestWrite() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.largest
}

type countingWriter struct {
	storagedriver.FileWriter
	d       *countingDriver
	written int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.FileWriter.Write(p)
	w.written += int64(n)
	w.d.mu.Lock()
	w.d.largest = max(w.d.largest, w.written)
	w.d.mu.Unlock()
	return n, err
}
