package rewrite

import (
	"archive/tar"
	"bytes"
	"cmp"
	stdgzip "compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// entry is one tar entry of a test layer.
type entry struct {
	hdr  tar.Header
	body string
}

var epoch = time.Unix(1700000000, 0)

func reg(name, body string, pax map[string]string) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: epoch, PAXRecords: pax, Uid: 1000, Gid: 1000, Uname: "u", Gname: "g"}, body}
}

func special(typ byte, name, link string, pax map[string]string) entry {
	return entry{tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: 0o777, ModTime: epoch, PAXRecords: pax, Devmajor: 1, Devminor: 3}, ""}
}

func buildTar(t testing.TB, entries []entry, format tar.Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if format != tar.FormatUnknown {
			h.Format = format
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func compress(t testing.TB, raw []byte, c Compression) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newCompressor(&buf, c)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(raw)
	w.Close()
	return buf.Bytes()
}

func decompress(t testing.TB, blob []byte) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(blob)
	switch {
	case bytes.HasPrefix(blob, gzipMagic):
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case bytes.HasPrefix(blob, zstdMagic):
		zr, err := zstd.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const (
	userX  = "SCHILY.xattr.user.origin"
	secX   = "SCHILY.xattr.security.selinux"
	trustX = "SCHILY.xattr.trusted.overlay.opaque"
	libX   = "LIBARCHIVE.xattr.user.b64"
)

var longName = strings.Repeat("very-long-directory-name/", 8) + "file.txt"

// layerCases: what the rule must strip (wantRemoved, "path: keys") and keep.
var layerCases = []struct {
	name        string
	entries     []entry
	format      tar.Format
	wantRemoved []string
}{
	{"symlink with user xattr", []entry{
		special(tar.TypeDir, "etc/", "", nil),
		special(tar.TypeSymlink, "etc/krb5.conf.d/crypto-policies", "/etc/crypto-policies/back-ends/krb5.config", map[string]string{userX: "v"}),
	}, tar.FormatPAX, []string{"etc/krb5.conf.d/crypto-policies: " + userX}},
	{"symlink with security, trusted and libarchive xattrs", []entry{
		special(tar.TypeSymlink, "a", "b", map[string]string{secX: "system_u:object_r:etc_t:s0", trustX: "y", libX: "dmFs"}),
	}, tar.FormatPAX, []string{"a: " + libX + ", " + secX + ", " + trustX}},
	{"xattrs on regular files, directories and hard links are kept", []entry{
		special(tar.TypeDir, "d/", "", map[string]string{userX: "dir"}),
		reg("d/f", "content", map[string]string{userX: "file", secX: "label"}),
		special(tar.TypeLink, "d/hard", "d/f", map[string]string{userX: "link"}),
	}, tar.FormatPAX, nil},
	{"devices and fifos", []entry{
		special(tar.TypeChar, "dev/null", "", map[string]string{userX: "c"}),
		special(tar.TypeBlock, "dev/loop0", "", map[string]string{userX: "b"}),
		special(tar.TypeFifo, "run/fifo", "", map[string]string{userX: "f"}),
	}, tar.FormatPAX, []string{"dev/null: " + userX, "dev/loop0: " + userX, "run/fifo: " + userX}},
	{"long names in PAX", []entry{
		reg(longName, "x", nil),
		special(tar.TypeSymlink, longName+".link", longName, map[string]string{userX: "v"}),
	}, tar.FormatPAX, []string{longName + ".link: " + userX}},
	{"long names in GNU format", []entry{
		reg(longName, "x", nil),
		special(tar.TypeSymlink, longName+".link", longName, nil),
	}, tar.FormatGNU, nil},
	{"whiteouts", []entry{
		special(tar.TypeDir, "var/", "", nil),
		reg("var/.wh..wh..opq", "", nil),
		reg("var/.wh.cache", "", nil),
		special(tar.TypeSymlink, "var/run", "/run", map[string]string{userX: "v"}),
	}, tar.FormatPAX, []string{"var/run: " + userX}},
	{"empty layer", nil, tar.FormatUnknown, nil},
	// Names are data to the rule: never cleaned, joined or resolved.
	{"hostile names passed through", []entry{
		reg("../../etc/passwd", "x", nil),
		reg("/abs/file", "y", nil),
		special(tar.TypeSymlink, "/abs/../../link", "../../../etc/shadow", map[string]string{userX: "v"}),
	}, tar.FormatPAX, []string{"/abs/../../link: " + userX}},
}

func TestLayerRule(t *testing.T) {
	t.Parallel()
	for _, tt := range layerCases {
		for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
			t.Run(tt.name+"/"+string(comp), func(t *testing.T) {
				t.Parallel()
				raw := buildTar(t, tt.entries, tt.format)
				blob := compress(t, raw, comp)

				scan, err := ScanLayer(bytes.NewReader(blob), Limits{})
				if err != nil {
					t.Fatal(err)
				}
				if scan.Compression != comp || scan.Entries != len(tt.entries) {
					t.Fatalf("scan: %+v", scan)
				}
				if got := describeRemovals(scan.Removals); !slices.Equal(got, tt.wantRemoved) && !(len(got) == 0 && len(tt.wantRemoved) == 0) {
					t.Fatalf("scan found %q, want %q", got, tt.wantRemoved)
				}
				var out bytes.Buffer
				res, err := RepackLayer(&out, bytes.NewReader(blob), Limits{})
				if err != nil {
					t.Fatal(err)
				}
				checkRepacked(t, raw, blob, out.Bytes(), res)
			})
		}
	}
}

// checkRepacked holds for every repackaged layer: digests and size verify,
// compression is kept, every entry is kept with everything but the removed
// xattrs, the output is deterministic, and a second scan finds nothing.
func checkRepacked(t *testing.T, raw, blob, out []byte, res LayerResult) {
	t.Helper()
	if res.Digest != digest.FromBytes(out) || res.Size != int64(len(out)) {
		t.Fatal("digest or size does not verify")
	}
	newRaw := decompress(t, out)
	if res.DiffID != digest.FromBytes(newRaw) {
		t.Fatal("diff_id does not verify")
	}
	if got, _ := ScanLayer(bytes.NewReader(out), Limits{}); got.Compression != res.Compression {
		t.Fatalf("compression %s became %s", res.Compression, got.Compression)
	}
	removed := map[string][]string{}
	for _, r := range res.Removals {
		removed[r.Path] = r.Keys
	}
	before, after := readEntries(t, raw), readEntries(t, newRaw)
	if len(before) != len(after) {
		t.Fatalf("%d entries became %d", len(before), len(after))
	}
	for i := range before {
		b, a := before[i], after[i]
		for _, k := range removed[b.hdr.Name] {
			delete(b.hdr.PAXRecords, k)
		}
		if b.hdr.Name != a.hdr.Name || b.hdr.Linkname != a.hdr.Linkname || b.hdr.Typeflag != a.hdr.Typeflag ||
			b.hdr.Mode != a.hdr.Mode || b.hdr.Uid != a.hdr.Uid || b.hdr.Gid != a.hdr.Gid || b.hdr.Uname != a.hdr.Uname ||
			b.hdr.Gname != a.hdr.Gname || !b.hdr.ModTime.Equal(a.hdr.ModTime) || b.hdr.Devmajor != a.hdr.Devmajor ||
			b.hdr.Devminor != a.hdr.Devminor || b.body != a.body || !maps.Equal(xattrs(b.hdr), xattrs(a.hdr)) {
			t.Fatalf("entry %d changed:\n%+v\n%+v", i, b.hdr, a.hdr)
		}
	}
	var again bytes.Buffer
	res2, err := RepackLayer(&again, bytes.NewReader(blob), Limits{})
	if err != nil || !bytes.Equal(again.Bytes(), out) || res2.Digest != res.Digest {
		t.Fatal("repacking the same layer twice gave different bytes")
	}
	if scan, err := ScanLayer(bytes.NewReader(out), Limits{}); err != nil || !scan.Clean() {
		t.Fatalf("second pass: %+v %v", scan, err)
	}
}

func readEntries(t *testing.T, raw []byte) []entry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(raw))
	var out []entry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		out = append(out, entry{*hdr, string(body)})
	}
}

func xattrs(h tar.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h.PAXRecords {
		if strings.Contains(k, "xattr.") {
			out[k] = v
		}
	}
	return out
}

// TestRepackedDigestsGolden pins the bytes a repackaged layer has. If this
// changes (a new compression library version, say), replicas running
// different versions would compute different digests: note it in the
// release, then run go test ./rewrite -update.
func TestRepackedDigestsGolden(t *testing.T) {
	t.Parallel()
	var all []entry
	for _, c := range layerCases {
		all = append(all, c.entries...)
	}
	raw := buildTar(t, all, tar.FormatPAX)
	got := map[string]string{}
	for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
		var out bytes.Buffer
		res, err := RepackLayer(&out, bytes.NewReader(compress(t, raw, comp)), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		got[string(comp)] = fmt.Sprintf("digest %s size %d diff_id %s", res.Digest, res.Size, res.DiffID)
	}
	// The zstd → gzip rule's two transforms of the zstd layer.
	for _, tr := range []LayerTransform{{To: Gzip}, {Strip: true, To: Gzip}} {
		var out bytes.Buffer
		res, err := TransformLayer(&out, bytes.NewReader(compress(t, raw, Zstd)), Limits{}, tr)
		if err != nil {
			t.Fatal(err)
		}
		got["zstd to "+tr.Key()] = fmt.Sprintf("digest %s size %d diff_id %s", res.Digest, res.Size, res.DiffID)
	}
	// The sparse rule's transforms of a layer with a GNU sparse entry.
	sparse := sparseLayer(t)
	for _, tr := range []LayerTransform{{Expand: true}, {Strip: true}, {Strip: true, Expand: true}, {Expand: true, To: Gzip}} {
		var out bytes.Buffer
		res, err := TransformLayer(&out, bytes.NewReader(compress(t, sparse, Zstd)), Limits{}, tr)
		if err != nil {
			t.Fatal(err)
		}
		got["sparse zstd "+cmp.Or(tr.Key(), "strip")] = fmt.Sprintf("digest %s size %d diff_id %s", res.Digest, res.Size, res.DiffID)
	}
	b, _ := json.MarshalIndent(got, "", "  ")
	golden(t, filepath.Join("testdata", "layer", "repacked-digests.json"), append(b, '\n'))
}

func TestNotATar(t *testing.T) {
	t.Parallel()
	for name, blob := range map[string][]byte{
		"bad gzip":      append(bytes.Clone(gzipMagic), 0, 1, 2, 3),
		"gzip of junk":  compress(t, bytes.Repeat([]byte("junk"), 300), Gzip),
		"truncated tar": buildTar(t, layerCases[0].entries, tar.FormatPAX)[:700],
	} {
		if _, err := ScanLayer(bytes.NewReader(blob), Limits{}); err == nil {
			t.Errorf("%s: scan accepted it", name)
		}
		if _, err := RepackLayer(io.Discard, bytes.NewReader(blob), Limits{}); err == nil {
			t.Errorf("%s: repack accepted it", name)
		}
	}
}

// A source that fails is not a verdict on the layer: the error must not be
// ErrNotTar (which would mark the layer as unreadable for good).
func TestSourceFailureIsNotAVerdict(t *testing.T) {
	t.Parallel()
	blob := compress(t, buildTar(t, layerCases[0].entries, tar.FormatPAX), Gzip)
	failing := io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), iotest.ErrReader(errDownload))
	if _, err := ScanLayer(failing, Limits{}); !errors.Is(err, errDownload) || errors.Is(err, ErrNotTar) {
		t.Fatalf("scan: %v", err)
	}
	failing = io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), iotest.ErrReader(errDownload))
	if _, err := RepackLayer(io.Discard, failing, Limits{}); !errors.Is(err, errDownload) || errors.Is(err, ErrNotTar) {
		t.Fatalf("repack: %v", err)
	}
}

var errDownload = errors.New("connection reset")

func TestLayerSizeLimit(t *testing.T) {
	t.Parallel()
	raw := buildTar(t, []entry{reg("big", strings.Repeat("0", 1<<20), nil)}, tar.FormatPAX)
	for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
		blob := compress(t, raw, comp)
		if _, err := ScanLayer(bytes.NewReader(blob), Limits{Size: int64(len(raw))}); err != nil {
			t.Errorf("%s: a layer of exactly the limit: %v", comp, err)
		}
		if _, err := ScanLayer(bytes.NewReader(blob), Limits{Size: 1 << 19}); !errors.Is(err, ErrLayerTooLarge) {
			t.Errorf("%s: scan over the limit: %v, want ErrLayerTooLarge", comp, err)
		}
		if _, err := RepackLayer(io.Discard, bytes.NewReader(blob), Limits{Size: 1 << 19}); !errors.Is(err, ErrLayerTooLarge) {
			t.Errorf("%s: repack over the limit: %v, want ErrLayerTooLarge", comp, err)
		}
	}
}

// TestRemovalsAreCapped: a layer of many stripped entries counts them all
// but lists only the first maxRecordedRemovals.
func TestRemovalsAreCapped(t *testing.T) {
	t.Parallel()
	var entries []entry
	for i := range maxRecordedRemovals + 5 {
		entries = append(entries, special(tar.TypeSymlink, fmt.Sprintf("l%d", i), "t", map[string]string{userX: "v"}))
	}
	scan, err := ScanLayer(bytes.NewReader(buildTar(t, entries, tar.FormatPAX)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if scan.Stripped != len(entries) || len(scan.Removals) != maxRecordedRemovals || scan.Unlisted() != 5 {
		t.Fatalf("stripped %d, listed %d, unlisted %d; want %d, %d and 5", scan.Stripped, len(scan.Removals), scan.Unlisted(), len(entries), maxRecordedRemovals)
	}
}

// TestRecordedRemovalsAreBounded: what a layer's paths and keys put in its
// list is bounded per entry and in all, the same way every time, and only
// the list is cut: the repackaged layer keeps every name whole.
func TestRecordedRemovalsAreBounded(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 1000) // two bytes a rune: a cut can fall inside one
	manyKeys := map[string]string{}
	for i := range maxRecordedKeys + 3 {
		manyKeys[fmt.Sprintf("SCHILY.xattr.user.%02d", i)] = "v"
	}
	var entries []entry
	entries = append(entries,
		special(tar.TypeSymlink, "short", "t", map[string]string{userX: "v"}),
		special(tar.TypeSymlink, long, "t", map[string]string{"SCHILY.xattr.user." + long: "v"}),
		special(tar.TypeSymlink, "keys", "t", manyKeys))
	for i := range 200 {
		entries = append(entries, special(tar.TypeSymlink, fmt.Sprintf("%03d", i)+long, "t", map[string]string{userX: "v"}))
	}
	raw := buildTar(t, entries, tar.FormatPAX)
	var out bytes.Buffer
	res, err := RepackLayer(&out, bytes.NewReader(raw), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, r := range res.Removals {
		size += len(r.Path)
		for _, k := range r.Keys {
			size += len(k)
			if len(k) > maxRecordedKey || !utf8.ValidString(k) {
				t.Errorf("key %q: more than %d bytes, or cut inside a rune", k, maxRecordedKey)
			}
		}
		if len(r.Path) > maxRecordedPath || !utf8.ValidString(r.Path) || len(r.Keys) > maxRecordedKeys {
			t.Errorf("entry %.40q…: %d bytes, %d keys", r.Path, len(r.Path), len(r.Keys))
		}
	}
	if size > maxRecordedBytes || res.Stripped != len(entries) || len(res.Removals)+res.Unlisted() != len(entries) || res.Unlisted() == 0 {
		t.Fatalf("listed %d entries of %d bytes, %d unlisted; want at most %d bytes and %d entries in all",
			len(res.Removals), size, res.Unlisted(), maxRecordedBytes, len(entries))
	}
	if r := res.Removals[1]; !strings.HasSuffix(r.Path, clipMark) || !strings.HasPrefix(long, strings.TrimSuffix(r.Path, clipMark)) {
		t.Errorf("a long path is recorded as %q: want its start, marked as cut", r.Path)
	}
	if r := res.Removals[2]; len(r.Keys) != maxRecordedKeys || r.MoreKeys != 3 || !strings.HasSuffix(describeRemovals([]XattrRemoval{r})[0], " and 3 more") {
		t.Errorf("an entry of %d keys is recorded as %+v", len(manyKeys), r)
	}
	again, err := ScanLayer(bytes.NewReader(raw), Limits{})
	if err != nil || !slices.EqualFunc(again.Removals, res.Removals, func(a, b XattrRemoval) bool {
		return a.Path == b.Path && slices.Equal(a.Keys, b.Keys) && a.MoreKeys == b.MoreKeys
	}) {
		t.Fatalf("a second scan lists otherwise: %v", err)
	}
	for i, e := range readEntries(t, decompress(t, out.Bytes())) {
		if e.hdr.Name != entries[i].hdr.Name {
			t.Fatalf("entry %d renamed in the layer: %d bytes, want %d", i, len(e.hdr.Name), len(entries[i].hdr.Name))
		}
	}
}

// TestTruncatedSourceIsAnError: a source cut short says so with
// io.ErrUnexpectedEOF (net/http does, for a body shorter than its length).
// Cut at a tar block boundary, the archive itself looks complete; the scan
// and the repack must still fail rather than "succeed" with fewer entries.
// The oracle is the standard library's tar reader on the whole layer.
func TestTruncatedSourceIsAnError(t *testing.T) {
	t.Parallel()
	var entries []entry
	rnd := rand.New(rand.NewPCG(1, 2)) // incompressible, so each cut lands mid-layer
	for i := range 51 {
		body := make([]byte, 100)
		for j := range body {
			body[j] = byte(rnd.Uint32())
		}
		entries = append(entries, reg(fmt.Sprintf("f%02d", i), string(body), nil))
	}
	raw := buildTar(t, entries, tar.FormatPAX)
	if n := stdlibEntries(t, raw); n != 51 {
		t.Fatalf("oracle counts %d entries, want 51", n)
	}
	for _, comp := range []Compression{Uncompressed, Gzip, Zstd} {
		blob := compress(t, raw, comp)
		if scan, err := ScanLayer(bytes.NewReader(blob), Limits{}); err != nil || scan.Entries != 51 {
			t.Fatalf("%s: whole layer: %+v %v", comp, scan, err)
		}
		// Two entries (header and one data block each) in; for the
		// compressed layers, a cut at the same proportion.
		cut := 2 * 2 * 512
		if comp != Uncompressed {
			cut = len(blob) * cut / len(raw)
		}
		for _, at := range []int{512, cut, len(blob) - 1} {
			short := func() io.Reader {
				return io.MultiReader(bytes.NewReader(blob[:at]), iotest.ErrReader(io.ErrUnexpectedEOF))
			}
			if scan, err := ScanLayer(short(), Limits{}); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s cut at %d: scan %+v, %v; want io.ErrUnexpectedEOF", comp, at, scan, err)
			}
			if res, err := RepackLayer(io.Discard, short(), Limits{}); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s cut at %d: repack %d entries, %v; want io.ErrUnexpectedEOF", comp, at, res.Entries, err)
			}
		}
	}
}

// TestTrailingSourceErrorIsAnError: the source's verdict at the very end of
// the stream (a digest check after the last byte) is heard, even though the
// archive ended before it.
func TestTrailingSourceErrorIsAnError(t *testing.T) {
	t.Parallel()
	raw := buildTar(t, layerCases[0].entries, tar.FormatPAX)
	for _, comp := range []Compression{Uncompressed, Gzip, Zstd} {
		blob := compress(t, raw, comp)
		bad := func() io.Reader { return io.MultiReader(bytes.NewReader(blob), iotest.ErrReader(errDownload)) }
		if _, err := ScanLayer(bad(), Limits{}); !errors.Is(err, errDownload) {
			t.Errorf("%s: scan: %v, want the source's error", comp, err)
		}
		if _, err := RepackLayer(io.Discard, bad(), Limits{}); !errors.Is(err, errDownload) {
			t.Errorf("%s: repack: %v, want the source's error", comp, err)
		}
	}
}

// stdlibEntries counts the entries of an uncompressed or gzip layer with the
// standard library alone: an oracle independent of openLayer.
func stdlibEntries(t testing.TB, blob []byte) int {
	t.Helper()
	var r io.Reader = bytes.NewReader(blob)
	if bytes.HasPrefix(blob, gzipMagic) {
		zr, err := stdgzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			return -1
		}
		n++
	}
}

// TestIsScannableLayer: every layer type containerd 1.4 – 2.x unpacks from
// a registry is scanned; foreign, non-distributable and encrypted layers
// are not.
func TestIsScannableLayer(t *testing.T) {
	t.Parallel()
	for mediaType, want := range map[string]bool{
		"application/vnd.docker.image.rootfs.diff.tar":                      true,
		"application/vnd.docker.image.rootfs.diff.tar.gzip":                 true,
		"application/vnd.docker.image.rootfs.diff.tar.zstd":                 true,
		"application/vnd.oci.image.layer.v1.tar":                            true,
		"application/vnd.oci.image.layer.v1.tar+gzip":                       true,
		"application/vnd.oci.image.layer.v1.tar+zstd":                       true,
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":         false,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":      false,
		"application/vnd.oci.image.layer.v1.tar+gzip+encrypted":             false,
		"application/vnd.oci.image.config.v1+json":                          false,
		"application/vnd.cncf.helm.chart.content.v1.tar+gzip":               false,
		"application/vnd.docker.image.rootfs.diff.tar.gzip; charset=binary": false,
	} {
		if got := IsScannableLayer(mediaType); got != want {
			t.Errorf("IsScannableLayer(%q) = %v, want %v", mediaType, got, want)
		}
	}
}

// A zstd layer recompressed with gzip keeps its tar byte for byte (so its
// diff ID), in the same bytes on every replica; with the symlink rule too,
// it is repackaged and written as gzip in one pass.
func TestZstdToGzip(t *testing.T) {
	t.Parallel()
	raw := buildTar(t, []entry{
		reg("etc/motd", "hello\n", nil),
		special(tar.TypeSymlink, "etc/link", "motd", map[string]string{"SCHILY.xattr.user.origin": "x"}),
	}, tar.FormatPAX)
	blob := compress(t, raw, Zstd)
	var out bytes.Buffer
	res, err := TransformLayer(&out, bytes.NewReader(blob), Limits{}, LayerTransform{To: Gzip})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out.Bytes(), gzipMagic) || !bytes.Equal(decompress(t, out.Bytes()), raw) || res.Compression != Gzip {
		t.Fatal("recompressed layer is not the same tar, gzipped")
	}
	if res.DiffID != digest.FromBytes(raw) || res.Digest != digest.FromBytes(out.Bytes()) || res.Size != int64(out.Len()) || res.Stripped != 0 {
		t.Fatalf("result %+v", res)
	}
	var again bytes.Buffer
	if _, err := TransformLayer(&again, bytes.NewReader(blob), Limits{}, LayerTransform{To: Gzip}); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatal("recompressing twice gave other bytes")
	}

	var both bytes.Buffer
	res, err = TransformLayer(&both, bytes.NewReader(blob), Limits{}, LayerTransform{Strip: true, To: Gzip})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(both.Bytes(), gzipMagic) || res.Stripped != 1 || res.DiffID == digest.FromBytes(raw) || res.DiffID != digest.FromBytes(decompress(t, both.Bytes())) {
		t.Fatalf("strip and gzip: %+v", res)
	}

	// A source cut short is an error, never a layer; nor is one that
	// expands beyond the limit.
	cut := io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, err := TransformLayer(io.Discard, cut, Limits{}, LayerTransform{To: Gzip}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("recompressing a cut source: %v", err)
	}
	if _, err := TransformLayer(io.Discard, bytes.NewReader(blob), Limits{Size: 100}, LayerTransform{To: Gzip}); !errors.Is(err, ErrLayerTooLarge) {
		t.Errorf("recompressing beyond the limit: %v", err)
	}

	// A writer that fails (a full disk) is the writer's failure, never a
	// verdict on the layer.
	full := errors.New("no space left on device")
	noise := make([]byte, 4<<20) // varied: the compressor writes long before the end
	for i := range noise {
		noise[i] = byte(i*7919 + i>>8*31)
	}
	large := compress(t, buildTar(t, []entry{reg("noise", string(noise), nil)}, tar.FormatPAX), Zstd)
	for _, tr := range []LayerTransform{{To: Gzip}, {Strip: true}, {Strip: true, To: Gzip}} {
		_, err := TransformLayer(failingWriter{full}, bytes.NewReader(large), Limits{}, tr)
		if !errors.Is(err, full) || errors.Is(err, ErrNotTar) {
			t.Errorf("%+v to a full disk: %v", tr, err)
		}
	}

	for _, key := range []string{"", "gzip", "strip,gzip"} {
		tr, err := ParseLayerTransform(key)
		if err != nil || tr.Key() != key {
			t.Errorf("ParseLayerTransform(%q) = %+v, %v", key, tr, err)
		}
	}
	if LayerMediaType(MediaTypeDockerLayerZstd, Gzip) != MediaTypeDockerLayerGzip ||
		LayerMediaType(ocispec.MediaTypeImageLayerZstd, Gzip) != ocispec.MediaTypeImageLayerGzip {
		t.Error("LayerMediaType does not keep the family")
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// TestRecordedRemovalsKeepNoHeaderAlive: archive/tar's names and keys are
// slices of the entry's whole PAX header, so a record that kept one kept a
// megabyte. What a scan lists is copied: after the scan, the heap holds
// the layer and little more. Not parallel: it measures the heap.
func TestRecordedRemovalsKeepNoHeaderAlive(t *testing.T) {
	long := strings.Repeat("p", 256<<10)
	var entries []entry
	for i := range 50 { // all listed: 50 clipped paths and keys fit maxRecordedBytes
		entries = append(entries, special(tar.TypeSymlink, fmt.Sprintf("%03d", i)+long, "t", map[string]string{userX: "v"}))
	}
	raw := buildTar(t, entries, tar.FormatPAX)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	scan, err := ScanLayer(bytes.NewReader(raw), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	grown := int64(heap()) - int64(before)
	if len(scan.Removals) != len(entries) {
		t.Fatalf("listed %d removals, want %d", len(scan.Removals), len(entries))
	}
	// The list itself is within maxRecordedBytes (16 KiB).
	if grown > 4<<20 {
		t.Errorf("the scan's record keeps %d MiB alive, want well under 4", grown>>20)
	}
	runtime.KeepAlive(raw)
	runtime.KeepAlive(scan)
}
