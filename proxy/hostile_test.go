package proxy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/rewrite"
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
				if _, err := h.store.GetManifest(context.Background(), "docker.io", "library/hostile", digest.FromString(tt.body)); !errors.Is(err, cache.ErrNotFound) {
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
	return pushRawLayerImage(t, h, repo, tag, regtest.MediaTypeDockerLayer, layer)
}

// pushRawLayerImage pushes an image with one given layer blob of
// mediaType (an OCI image for an OCI layer type, else a Docker one) and
// returns its manifest.
func pushRawLayerImage(t *testing.T, h *harness, repo, tag, mediaType string, layer []byte) []byte {
	t.Helper()
	ctx := context.Background()
	manifestType, configType := regtest.MediaTypeDockerManifest, regtest.MediaTypeDockerConfig
	if strings.HasPrefix(mediaType, "application/vnd.oci.") {
		manifestType, configType = ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig
	}
	// The layer's own diff ID where it has one (the image is otherwise
	// right: the diff IDs rule has nothing to mend); garbage has none.
	diffID, _, err := rewrite.LayerDiffID(bytes.NewReader(layer), rewrite.Limits{})
	if err != nil {
		diffID = digest.FromString("unknown")
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffID.String() + `"]}}`)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		manifestType, configType, digest.FromBytes(config), len(config),
		mediaType, digest.FromBytes(layer), len(layer)))
	c := h.reg.Client()
	for _, b := range [][]byte{layer, config} {
		if err := c.PushBlob(ctx, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushManifest(ctx, repo, tag, manifestType, manifest); err != nil {
		t.Fatal(err)
	}
	return manifest
}

// TestLayerPathsDoNotSizeRecords: a small layer of symlinks with long paths
// and xattrs is repackaged for containerd 1.6.8, and its layer record, the
// rewrite report and the status page stay small: each path is cut, the list
// is bounded, and the record says how many entries it leaves out. The
// repackaged layer keeps every path whole. (The layer had paths of
// 512 KiB, and made records of 67 MB; 64 KiB paths make 8 MB ones without
// the bounds, at an eighth of the test's time under the race detector.)
func TestLayerPathsDoNotSizeRecords(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const links, pathLen = 128, 64 << 10
	var files []regtest.File
	for i := range links {
		files = append(files, regtest.File{Name: fmt.Sprintf("%03d/", i) + strings.Repeat("p", pathLen-4), Typeflag: tar.TypeSymlink,
			Linkname: "target", PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}})
	}
	img := h.push(t, "library/longpaths", "v1", regtest.ImageOptions{}, files)
	t.Logf("layer blob: %d bytes", len(img.Layers[0]))

	dgst := headDigest(t, h, "/v2/library/longpaths/manifests/v1", containerdHeader("1.6.8"))
	if dgst == img.ManifestDigest {
		t.Fatal("containerd 1.6.8 got the original: the layer was not repackaged")
	}

	// What each place may hold, whatever the layer's paths.
	const maxRecord, maxReport, maxStatus = 64 << 10, 128 << 10, 256 << 10
	type change struct {
		Kind     string   `json:"kind"`
		Details  []string `json:"details"`
		Unlisted int      `json:"unlisted"`
	}
	report := h.do(t, http.MethodGet, "/api/v1/rewrites", nil)
	if report.status != http.StatusOK || len(report.body) > maxReport {
		t.Fatalf("/api/v1/rewrites: %d, %d bytes; want 200 and at most %d", report.status, len(report.body), maxReport)
	}
	var body struct {
		Rewrites []struct {
			Changes []change `json:"changes"`
		} `json:"rewrites"`
	}
	if err := json.Unmarshal(report.body, &body); err != nil || len(body.Rewrites) != 1 || len(body.Rewrites[0].Changes) != 1 {
		t.Fatalf("report: %v %.500s", err, report.body)
	}
	c := body.Rewrites[0].Changes[0]
	if c.Kind != "symlink-xattrs" || len(c.Details) == 0 || len(c.Details)+c.Unlisted != links {
		t.Fatalf("change %s lists %d entries and says %d more; want %d in all", c.Kind, len(c.Details), c.Unlisted, links)
	}
	if !strings.HasPrefix(c.Details[0], "000/ppp") || !strings.Contains(c.Details[0], "…: SCHILY.xattr.user.x") {
		t.Errorf("first entry %.80q…: want the path cut, marked, then its key", c.Details[0])
	}

	status := h.do(t, http.MethodGet, "/status", nil)
	if status.status != http.StatusOK || len(status.body) > maxStatus {
		t.Fatalf("/status: %d, %d bytes; want 200 and at most %d", status.status, len(status.body), maxStatus)
	}
	if want := fmt.Sprintf("and %d more not listed", c.Unlisted); !strings.Contains(string(status.body), want) {
		t.Errorf("/status does not say %q", want)
	}

	var orig ocispec.Manifest
	json.Unmarshal(img.Manifest, &orig)
	v, err := h.store.GetLayerVerdict(context.Background(), orig.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	record, _ := json.Marshal(v)
	var counts struct {
		Removals []json.RawMessage `json:"removals"`
		Unlisted int               `json:"unlisted"`
	}
	json.Unmarshal(record, &counts)
	if len(record) > maxRecord || len(counts.Removals)+counts.Unlisted != links {
		t.Fatalf("layer record: %d bytes, %d entries listed and %d said left out; want at most %d bytes and %d entries in all",
			len(record), len(counts.Removals), counts.Unlisted, maxRecord, links)
	}

	// The record is cut, the layer is not.
	m := variantOf(t, h, "library/longpaths", "1.6.8")
	layer := h.do(t, http.MethodGet, "/v2/library/longpaths/blobs/"+m.Layers[0].Digest.String(), nil)
	tr := tar.NewReader(bytes.NewReader(gunzip(t, layer.body)))
	for i := 0; ; i++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			if i != links {
				t.Fatalf("repackaged layer has %d entries, want %d", i, links)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name != files[i].Name || hdr.PAXRecords["SCHILY.xattr.user.x"] != "" {
			t.Fatalf("entry %d: a %d-byte name, want %d; xattr %q, want none", i, len(hdr.Name), len(files[i].Name), hdr.PAXRecords["SCHILY.xattr.user.x"])
		}
	}
}

// TestUntouchedLayersDoNotSizeRecords: what a manifest lists decides the
// number of notes and changes a record keeps no more than what its layers
// hold does. A tiny zstd layer that declares a 128 MiB window, listed a
// thousand times, is one note (per digest); 150 different ones are the
// first 100 notes and a count of the rest. The report and the status page
// stay small either way. (The review saw 381 KB of
// /api/v1/rewrites and 206 KB of /status for the thousand.)
func TestUntouchedLayersDoNotSizeRecords(t *testing.T) {
	t.Parallel()
	const maxReport, maxStatus = 64 << 10, 128 << 10
	one := rleZstdLayer(27, 1)
	var distinct [][]byte
	for i := range 150 {
		distinct = append(distinct, rleZstdLayer(27, i+1))
	}
	for _, tt := range []struct {
		name         string
		layers       [][]byte
		wantNotes    int
		wantUnlisted int
	}{
		{"one layer listed a thousand times", slices.Repeat([][]byte{one}, 1000), 1, 0},
		{"150 layers", distinct, 100, 50},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			pushLayersImage(t, h, "library/many", "v1", ocispec.MediaTypeImageLayerZstd, tt.layers)
			if r := h.do(t, http.MethodHead, "/v2/library/many/manifests/v1", containerdHeader("1.6.8")); r.status != http.StatusOK {
				t.Fatalf("pull as 1.6.8: %d", r.status)
			}
			report := h.do(t, http.MethodGet, "/api/v1/rewrites", nil)
			if report.status != http.StatusOK || len(report.body) > maxReport {
				t.Fatalf("/api/v1/rewrites: %d, %d bytes; want 200 and at most %d", report.status, len(report.body), maxReport)
			}
			var body struct {
				Rewrites []struct {
					Changes         []cache.Change `json:"changes"`
					UnlistedChanges int            `json:"unlistedChanges"`
				} `json:"rewrites"`
			}
			if err := json.Unmarshal(report.body, &body); err != nil || len(body.Rewrites) != 1 {
				t.Fatalf("report: %v %.300s", err, report.body)
			}
			e := body.Rewrites[0]
			if len(e.Changes) != tt.wantNotes || e.UnlistedChanges != tt.wantUnlisted {
				t.Fatalf("the report lists %d notes and says %d more; want %d and %d", len(e.Changes), e.UnlistedChanges, tt.wantNotes, tt.wantUnlisted)
			}
			seen := map[string]bool{}
			for _, c := range e.Changes {
				if c.Kind != normalize.KindLayerUntouched || seen[c.Old] {
					t.Fatalf("note %+v: want one layer-untouched note per layer", c)
				}
				seen[c.Old] = true
			}
			status := h.do(t, http.MethodGet, "/status", nil)
			if status.status != http.StatusOK || len(status.body) > maxStatus {
				t.Fatalf("/status: %d, %d bytes; want 200 and at most %d", status.status, len(status.body), maxStatus)
			}
			if want := fmt.Sprintf("and %d more changes not listed", tt.wantUnlisted); tt.wantUnlisted > 0 && !strings.Contains(string(status.body), want) {
				t.Errorf("/status does not say %q", want)
			}
		})
	}
}

// pushLayersImage pushes an image whose manifest lists layers, in order
// (one blob may be listed more than once), all of mediaType.
func pushLayersImage(t *testing.T, h *harness, repo, tag, mediaType string, layers [][]byte) {
	t.Helper()
	ctx := context.Background()
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}}
	m.SchemaVersion = 2
	pushed := map[digest.Digest]bool{}
	c := h.reg.Client()
	for _, b := range append([][]byte{config}, layers...) {
		if d := digest.FromBytes(b); !pushed[d] {
			pushed[d] = true
			if err := c.PushBlob(ctx, repo, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, b := range layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PushManifest(ctx, repo, tag, ocispec.MediaTypeImageManifest, raw); err != nil {
		t.Fatal(err)
	}
}

// rleZstdLayer is a zstd layer of one frame that declares a window of
// 1<<windowLog bytes and holds blocks run-length blocks of 128 KiB of
// zeros (an empty tar): a few bytes a block, and a decoder that trusts the
// header keeps a window of that size while it decodes.
func rleZstdLayer(windowLog, blocks int) []byte {
	out := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3} // magic; no content size; Window_Descriptor
	for i := range blocks {
		h := uint32(1)<<1 | uint32(128<<10)<<3 // RLE, 128 KiB
		if i == blocks-1 {
			h |= 1 // last
		}
		out = append(out, byte(h), byte(h>>8), byte(h>>16), 0x00)
	}
	return out
}

// TestZstdWindowLeavesLayerUntouched: a zstd layer whose frame declares a
// 128 MiB window (4 KB of run-length blocks) is never decoded: it is left
// untouched, for the symlink rule (containerd 1.6.8) and for the zstd →
// gzip rule (1.4), served as upstream has it, counted as skipped for its
// window, and named in the rewrite report.
func TestZstdWindowLeavesLayerUntouched(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	layer := rleZstdLayer(27, 1024)
	manifest := pushRawLayerImage(t, h, "library/window", "v1", ocispec.MediaTypeImageLayerZstd, layer)

	for _, version := range []string{"1.6.8", "1.4.13"} {
		r := h.do(t, http.MethodGet, "/v2/library/window/manifests/v1", containerdHeader(version))
		if r.status != http.StatusOK || !bytes.Equal(r.body, manifest) {
			t.Fatalf("containerd %s: got %d %.200s, want the manifest untouched", version, r.status, r.body)
		}
	}
	// Scanned once: the layer's record says it was left untouched, and why.
	if got := h.metric(t, "regnorm_layers_skipped_total", `reason="zstd-window"`); got != 1 {
		t.Errorf("layers skipped for their zstd window: %v, want 1", got)
	}
	r := h.do(t, http.MethodGet, "/v2/library/window/blobs/"+digest.FromBytes(layer).String(), nil)
	if r.status != http.StatusOK || !bytes.Equal(r.body, layer) {
		t.Fatalf("layer: got %d, %d bytes; want it byte for byte", r.status, len(r.body))
	}
	entries := h.report(t)
	if len(entries) == 0 {
		t.Fatal("the report does not name the layer left untouched")
	}
	for _, e := range entries {
		if e.Normalized != "" || len(e.Changes) != 1 || e.Changes[0].Kind != "layer-untouched" ||
			e.Changes[0].Old != digest.FromBytes(layer).String() || !strings.HasPrefix(strings.Join(e.Changes[0].Details, ""), "zstd-window: ") {
			t.Errorf("report entry for rules %s: %+v", e.Rules, e)
		}
	}
}

// TestRaisedLimitsJudgeLayersAgain: a layer left untouched for a limit
// (its zstd window, its decompressed size) is judged again once the limit
// is raised, and so are the verdicts that depended on it: the image's and
// the index's that lists it. Under the small limit containerd 1.6.8 gets
// both as upstream has them; after a restart with a larger limit on the
// same cache, it gets them normalized (the layer's xattr on a symlink
// stripped).
func TestRaisedLimitsJudgeLayersAgain(t *testing.T) {
	t.Parallel()
	raw, _, err := regtest.Layer(xattrLayer, ocispec.MediaTypeImageLayer)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, mediaType string
		layer           []byte
		small, large    harnessOptions
		reason          string
	}{
		{"zstd window", ocispec.MediaTypeImageLayerZstd, regtest.ZstdRawFrame(21, raw), // a 2 MiB window
			harnessOptions{maxZstdWindow: 1 << 20}, harnessOptions{maxZstdWindow: 4 << 20}, "zstd-window"},
		{"layer size", regtest.MediaTypeDockerLayer, bomb(t, 2<<20),
			harnessOptions{maxLayerSize: 1 << 20}, harnessOptions{maxLayerSize: 8 << 20}, "too-large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tt.small)
			manifest := pushRawLayerImage(t, h, "library/limits", "v1", tt.mediaType, tt.layer)
			index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}`,
				ocispec.MediaTypeImageIndex, mediaTypeOf(t, manifest), digest.FromBytes(manifest), len(manifest)))
			if err := h.reg.Client().PushManifest(context.Background(), "library/limits", "multi", ocispec.MediaTypeImageIndex, index); err != nil {
				t.Fatal(err)
			}
			for tag, want := range map[string][]byte{"v1": manifest, "multi": index} {
				r := h.do(t, http.MethodGet, "/v2/library/limits/manifests/"+tag, containerdHeader("1.6.8"))
				if r.status != http.StatusOK || !bytes.Equal(r.body, want) {
					t.Fatalf("%s under the small limit: %d %.200s, want it untouched", tag, r.status, r.body)
				}
			}
			if got := h.metric(t, "regnorm_layers_skipped_total", `reason="`+tt.reason+`"`); got != 1 {
				t.Fatalf("layers skipped for %s: %v, want 1", tt.reason, got)
			}

			h.opts.maxZstdWindow, h.opts.maxLayerSize = tt.large.maxZstdWindow, tt.large.maxLayerSize
			h.restart(t)
			r := h.do(t, http.MethodGet, "/v2/library/limits/manifests/v1", containerdHeader("1.6.8"))
			var m ocispec.Manifest
			if r.status != http.StatusOK || json.Unmarshal(r.body, &m) != nil || len(m.Layers) != 1 || m.Layers[0].Digest == digest.FromBytes(tt.layer) {
				t.Fatalf("the image under the larger limit: %d %.300s; want its layer repackaged", r.status, r.body)
			}
			normalized := digest.FromBytes(r.body)
			r = h.do(t, http.MethodGet, "/v2/library/limits/manifests/multi", containerdHeader("1.6.8"))
			var idx ocispec.Index
			if r.status != http.StatusOK || json.Unmarshal(r.body, &idx) != nil || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != normalized {
				t.Fatalf("the index under the larger limit: %d %.300s; want it to list the normalized image", r.status, r.body)
			}
		})
	}
}

// mediaTypeOf is a manifest's own mediaType field.
func mediaTypeOf(t *testing.T, manifest []byte) string {
	t.Helper()
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatal(err)
	}
	return m.MediaType
}

// TestLayerWorkIsBounded: layer scans take turns, and a scan takes its
// turn only once its layer is in the cache. Four images pulled at once
// with their downloads held upstream hold no turn. Let go, with two turns
// and two places in the queue, they run two scans and queue two (the two
// running held on their cache reads, so nothing ends meanwhile): the
// waiting ones have not opened their layer. A fifth is answered 503 with
// Retry-After at once. Released, every pull gets its normalized image.
func TestLayerWorkIsBounded(t *testing.T) {
	t.Parallel()
	clk := newFakeClock() // no request reaches its deadline
	d := &gatedReads{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 50}), gated: map[string]bool{}}
	h := newHarness(t, harnessOptions{clock: clk, store: cache.New(d), layerWork: normalize.WorkLimits{Running: 2, Queued: 2}})
	for i := range 5 {
		img := h.push(t, fmt.Sprintf("library/work%d", i), "v1", regtest.ImageOptions{},
			append(slices.Clone(xattrLayer), regtest.File{Name: fmt.Sprintf("id%d", i), Content: []byte("x")}))
		d.gate(digest.FromBytes(img.Layers[0]))
	}
	reads, unblockReads := gate(t)
	d.release = reads
	downloads, unblockDownloads := gate(t)
	var held atomic.Int64
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			held.Add(1)
			<-downloads
		}
		h.front.relay(w, r)
	})
	answers := make(chan response, 4)
	for i := range 4 {
		go func() {
			answers <- h.do(t, http.MethodHead, fmt.Sprintf("/v2/library/work%d/manifests/v1", i), containerdHeader("1.6.8"))
		}()
	}
	waitFor(t, "the four layer downloads to reach the upstream", func() bool {
		if h.metric(t, "regnorm_layer_work_inflight", "") > 0 {
			t.Fatal("a scan took its turn before its layer was downloaded: it holds the turn while upstream takes its time")
		}
		return held.Load() == 4
	})
	if n := h.metric(t, "regnorm_layer_work_queued", ""); n != 0 {
		t.Errorf("layer work waiting while its layers download: %v, want 0", n)
	}

	unblockDownloads()
	waitFor(t, "two scans to run and two to wait", func() bool {
		return h.metric(t, "regnorm_layer_work_inflight", "") == 2 && h.metric(t, "regnorm_layer_work_queued", "") == 2
	})
	if n := d.opened.Load(); n != 2 {
		t.Errorf("%d layers opened, want 2: waiting work must not open its layer", n)
	}
	r := h.do(t, http.MethodHead, "/v2/library/work4/manifests/v1", containerdHeader("1.6.8"))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "5" {
		t.Fatalf("past the queue: %d, Retry-After %q; want 503 and 5", r.status, r.header.Get("Retry-After"))
	}
	if n := h.metric(t, "regnorm_layer_work_rejected_total", ""); n != 1 {
		t.Errorf("rejected layer work: %v, want 1", n)
	}
	if n := h.metric(t, "regnorm_layer_work_inflight", ""); n != 2 {
		t.Errorf("layer work running: %v, want 2", n)
	}

	unblockReads()
	for range 4 {
		if r := <-answers; r.status != http.StatusOK {
			t.Errorf("a queued pull: %d %s", r.status, r.body)
		}
	}
	if got := h.metric(t, "regnorm_normalizations_total", `result="normalized"`); got != 4 {
		t.Errorf("normalized %v images, want 4", got)
	}
	if r := h.do(t, http.MethodHead, "/v2/library/work4/manifests/v1", containerdHeader("1.6.8")); r.status != http.StatusOK {
		t.Errorf("the refused pull, again: %d", r.status)
	}
	if h.metric(t, "regnorm_layer_work_inflight", "") != 0 || h.metric(t, "regnorm_layer_work_queued", "") != 0 {
		t.Error("layer work left running or waiting")
	}
}

// gatedReads is a cache driver whose reads of the gated blobs wait until
// release is closed, counting the readers that opened one.
type gatedReads struct {
	storagedriver.StorageDriver
	gated   map[string]bool // blob data paths; set before any read
	release <-chan struct{}
	opened  atomic.Int64
}

func (d *gatedReads) gate(dgst digest.Digest) {
	d.gated["/blobs/sha256/"+dgst.Encoded()[:2]+"/"+dgst.Encoded()+"/data"] = true
}

func (d *gatedReads) Reader(ctx context.Context, p string, offset int64) (io.ReadCloser, error) {
	if d.gated[p] {
		d.opened.Add(1)
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.StorageDriver.Reader(ctx, p, offset)
}
