package rewrite

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// sparseLayer is a layer with a GNU sparse entry (a 1 MiB file: "head" at
// 0, "X" at 700000) between a regular file and a symlink with a user.*
// xattr, as GNU tar -S writes the entry.
func sparseLayer(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(e entry) {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(reg("before", "b", nil))
	if err := regtest.WriteGNUSparse(&buf, "var/lib/big", 0o640, 1<<20,
		[]regtest.SparseData{{Offset: 0, Data: []byte("head")}, {Offset: 700000, Data: []byte("X")}}); err != nil {
		t.Fatal(err)
	}
	write(special(tar.TypeSymlink, "link", "before", map[string]string{userX: "v"}))
	tw.Close()
	return buf.Bytes()
}

// sparseContent is the logical content of sparseLayer's sparse file, and of
// the fixture's.
func sparseContent() []byte {
	b := make([]byte, 1<<20)
	copy(b, "head")
	b[700000] = 'X'
	return b
}

// TestScanCountsGNUSparseEntries: the scan counts typeflag 'S' entries
// (from the headers alone) beside what the symlink rule strips; a PAX
// sparse file (GNU.sparse.* records on a regular entry, which
// containerd's reader expands itself) is not one.
func TestScanCountsGNUSparseEntries(t *testing.T) {
	t.Parallel()
	real, err := os.ReadFile(filepath.Join("testdata", "layer", "gnu-sparse.tar"))
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		raw          []byte
		wantExpanded []string
		wantStripped int
	}{
		"crafted":        {sparseLayer(t), []string{"var/lib/big"}, 1},
		"GNU tar 1.34":   {real, []string{"big"}, 0},
		"no sparse":      {buildTar(t, layerCases[0].entries, tar.FormatPAX), nil, 1},
		"PAX sparse 1.0": {paxSparseLayer(t), nil, 0},
	} {
		for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
			scan, err := ScanLayer(bytes.NewReader(compress(t, tc.raw, comp)), Limits{})
			if err != nil {
				t.Fatalf("%s %s: %v", name, comp, err)
			}
			if scan.Sparse != len(tc.wantExpanded) || !slices.Equal(scan.Expanded, tc.wantExpanded) || scan.Stripped != tc.wantStripped {
				t.Errorf("%s %s: sparse %d %q stripped %d, want %q, %d", name, comp, scan.Sparse, scan.Expanded, scan.Stripped, tc.wantExpanded, tc.wantStripped)
			}
			if scan.Clean() != (len(tc.wantExpanded) == 0 && tc.wantStripped == 0) {
				t.Errorf("%s %s: Clean() = %v", name, comp, scan.Clean())
			}
		}
	}
}

// paxSparseLayer is a PAX-format sparse file, GNU.sparse 1.0 (GNU tar
// --format=posix -S): a regular entry whose content starts with the
// sparse map. archive/tar reads it expanded.
func paxSparseLayer(t testing.TB) []byte {
	t.Helper()
	// map: 2 regions, "head" at 0 and "X" at 700000; padded to a block.
	sparseMap := []byte("2\n0\n4\n700000\n1\n")
	sparseMap = append(sparseMap, make([]byte, 512-len(sparseMap))...)
	body := append(sparseMap, []byte("headX")...)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "GNUSparseFile.0/big", Mode: 0o644, Size: int64(len(body)), ModTime: epoch,
		Format: tar.FormatPAX, PAXRecords: map[string]string{"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
			"GNU.sparse.name": "big", "GNU.sparse.realsize": "1048576"}}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	tw.Close()
	return buf.Bytes()
}

// TestExpandGNUSparse: each transform does what it says and only that: the
// sparse rule's writes the sparse entry as a regular file of its logical
// size and content, keeping the symlink's xattr; the symlink rule's strips
// it (and cannot write the sparse entry but expanded); both do both. Every
// other entry stays; a second scan finds nothing for the rules applied;
// the same input gives the same bytes.
func TestExpandGNUSparse(t *testing.T) {
	t.Parallel()
	raw := sparseLayer(t)
	want := sha256.Sum256(sparseContent())
	for _, tc := range []struct {
		tr           LayerTransform
		wantStripped int
	}{
		{LayerTransform{Expand: true}, 0},
		{LayerTransform{Strip: true}, 1},
		{LayerTransform{Strip: true, Expand: true}, 1},
		{LayerTransform{Expand: true, To: Gzip}, 0},
	} {
		for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
			blob := compress(t, raw, comp)
			var out bytes.Buffer
			res, err := TransformLayer(&out, bytes.NewReader(blob), Limits{Size: 4 << 20}, tc.tr)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.tr.Key(), comp, err)
			}
			if res.Sparse != 1 || !slices.Equal(res.Expanded, []string{"var/lib/big"}) || res.Stripped != tc.wantStripped || res.Transform != tc.tr {
				t.Fatalf("%s %s: %+v", tc.tr.Key(), comp, res.LayerScan)
			}
			newRaw := decompress(t, out.Bytes())
			if res.DiffID != digest.FromBytes(newRaw) || res.Digest != digest.FromBytes(out.Bytes()) || res.Size != int64(out.Len()) {
				t.Fatalf("%s %s: digests do not verify", tc.tr.Key(), comp)
			}
			got := readEntries(t, newRaw)
			if len(got) != 3 || got[0].hdr.Name != "before" || got[0].body != "b" || got[2].hdr.Name != "link" {
				t.Fatalf("%s %s: entries %v", tc.tr.Key(), comp, got)
			}
			big := got[1].hdr
			if big.Name != "var/lib/big" || big.Typeflag != tar.TypeReg || big.Size != 1<<20 || big.Mode != 0o640 ||
				sha256.Sum256([]byte(got[1].body)) != want {
				t.Fatalf("%s %s: the sparse entry became %+v (%d bytes)", tc.tr.Key(), comp, big, len(got[1].body))
			}
			for k := range big.PAXRecords {
				t.Fatalf("%s %s: the expanded entry has PAX record %s", tc.tr.Key(), comp, k)
			}
			if _, kept := got[2].hdr.PAXRecords[userX]; kept != (tc.wantStripped == 0) {
				t.Fatalf("%s %s: the symlink's xattr kept: %v", tc.tr.Key(), comp, kept)
			}
			again, err := ScanLayer(bytes.NewReader(out.Bytes()), Limits{})
			if err != nil || again.Sparse != 0 || again.Stripped != 1-tc.wantStripped || again.Entries != 3 {
				t.Fatalf("%s %s: second pass %+v %v", tc.tr.Key(), comp, again, err)
			}
			var twice bytes.Buffer
			if res2, err := TransformLayer(&twice, bytes.NewReader(blob), Limits{}, tc.tr); err != nil || res2.Digest != res.Digest || !bytes.Equal(twice.Bytes(), out.Bytes()) {
				t.Fatalf("%s %s: a second transform gave other bytes (%v)", tc.tr.Key(), comp, err)
			}
		}
	}
}

// TestExpandRealGNUTar: GNU tar's own sparse entry (the fixture) is
// expanded to the file that was archived.
func TestExpandRealGNUTar(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("testdata", "layer", "gnu-sparse.tar"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := TransformLayer(&out, bytes.NewReader(raw), Limits{Size: 4 << 20}, LayerTransform{Expand: true})
	if err != nil || res.Sparse != 1 || res.Expanded[0] != "big" {
		t.Fatalf("%+v %v", res.LayerScan, err)
	}
	got := readEntries(t, out.Bytes())
	if len(got) != 1 || got[0].hdr.Typeflag != tar.TypeReg || got[0].hdr.Size != 1<<20 || got[0].body != string(sparseContent()) {
		t.Fatalf("expanded to %+v", got)
	}
}

// TestSparseBomb: a sparse entry of a few bytes that declares a terabyte is
// ErrLayerTooLarge as soon as its header is read, whatever rule asked for
// the rewrite: the limit counts the tar written, expanded, not only the one
// read. One whose data fits but whose headers do not is refused as the tar
// is written.
func TestSparseBomb(t *testing.T) {
	t.Parallel()
	var bomb bytes.Buffer
	if err := regtest.WriteGNUSparse(&bomb, "bomb", 0o644, 1<<40, []regtest.SparseData{{Offset: 1<<40 - 1, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	bomb.Write(make([]byte, 1024))
	scan, err := ScanLayer(bytes.NewReader(bomb.Bytes()), Limits{Size: 1 << 20})
	if err != nil || scan.Sparse != 1 {
		t.Fatalf("scan of the bomb: %+v %v (a scan reads the headers only)", scan, err)
	}
	for _, tr := range []LayerTransform{{Expand: true}, {Strip: true}, {Strip: true, Expand: true, To: Zstd}} {
		for _, comp := range []Compression{Gzip, Uncompressed} {
			var out countWriter
			_, err := TransformLayer(&out, bytes.NewReader(compress(t, bomb.Bytes(), comp)), Limits{Size: 1 << 20}, tr)
			if !errors.Is(err, ErrLayerTooLarge) {
				t.Fatalf("%s %s: %v, want ErrLayerTooLarge", tr.Key(), comp, err)
			}
			if out.n > 64<<10 {
				t.Fatalf("%s %s: %d bytes written before the refusal", tr.Key(), comp, out.n)
			}
		}
	}
	// 1 MiB of file, a limit of 1 MiB and 100 bytes: the data would fit,
	// the headers and the end of the archive do not.
	var tight bytes.Buffer
	if err := regtest.WriteGNUSparse(&tight, "tight", 0o644, 1<<20, []regtest.SparseData{{Offset: 0, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	tight.Write(make([]byte, 1024))
	if _, err := TransformLayer(io.Discard, bytes.NewReader(tight.Bytes()), Limits{Size: 1<<20 + 100}, LayerTransform{Expand: true}); !errors.Is(err, ErrLayerTooLarge) {
		t.Fatalf("headers past the limit: %v, want ErrLayerTooLarge", err)
	}
	if _, err := TransformLayer(io.Discard, bytes.NewReader(tight.Bytes()), Limits{Size: 1<<20 + 2048}, LayerTransform{Expand: true}); err != nil {
		t.Fatalf("within the limit: %v", err)
	}
	// Unwritten (a rebuild) bounds only the read: the tight layer, whose
	// stored tar is a few KiB, is written whole under a limit its expanded
	// form passes.
	if _, err := TransformLayer(io.Discard, bytes.NewReader(tight.Bytes()), Limits{Size: 64 << 10, Unwritten: true}, LayerTransform{Expand: true}); err != nil {
		t.Fatalf("unwritten: %v", err)
	}
}

// TestSparseHolesLimit: Limits.Holes bounds the holes a repackaging fills,
// whatever the size limit allows: 1 MiB of holes refused under a limit of
// 64 KiB (the refusal before much is written), taken under 2 MiB.
func TestSparseHolesLimit(t *testing.T) {
	t.Parallel()
	var layer bytes.Buffer
	if err := regtest.WriteGNUSparse(&layer, "holes", 0o644, 1<<20, []regtest.SparseData{{Offset: 1<<20 - 1, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	layer.Write(make([]byte, 1024))
	for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
		blob := compress(t, layer.Bytes(), comp)
		var out countWriter
		_, err := TransformLayer(&out, bytes.NewReader(blob), Limits{Size: 1 << 30, Holes: 64 << 10}, LayerTransform{Expand: true})
		if !errors.Is(err, ErrHolesBeyondLimit) {
			t.Fatalf("%s: %v, want ErrHolesBeyondLimit", comp, err)
		}
		if out.n > 64<<10 {
			t.Fatalf("%s: %d bytes written before the refusal", comp, out.n)
		}
		if _, err := TransformLayer(io.Discard, bytes.NewReader(blob), Limits{Size: 1 << 30, Holes: 2 << 20}, LayerTransform{Expand: true}); err != nil {
			t.Fatalf("%s within the limit: %v", comp, err)
		}
	}
}

// TestLayerTransformKeys: every transform's key reads back as itself; the
// keys recorded before the sparse rule read as they did.
func TestLayerTransformKeys(t *testing.T) {
	t.Parallel()
	for _, strip := range []bool{false, true} {
		for _, expand := range []bool{false, true} {
			for _, to := range []Compression{"", Gzip, Zstd, Uncompressed} {
				tr := LayerTransform{Strip: strip, Expand: expand, To: to}
				if !tr.Rewrites() && to == "" {
					continue // nothing to do: never made
				}
				got, err := ParseLayerTransform(tr.Key())
				if err != nil || got != tr {
					t.Errorf("%+v: key %q reads as %+v, %v", tr, tr.Key(), got, err)
				}
			}
		}
	}
	for key, want := range map[string]LayerTransform{
		"": {Strip: true}, "strip,gzip": {Strip: true, To: Gzip}, "gzip": {To: Gzip},
		"expand": {Expand: true}, "strip,expand,gzip": {Strip: true, Expand: true, To: Gzip},
	} {
		if got, err := ParseLayerTransform(key); err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", key, got, err, want)
		}
	}
	for _, bad := range []string{"expand,strip", "strip", "gzip,strip", "lz4", "strip,expand,gzip,gzip", ","} {
		if got, err := ParseLayerTransform(bad); err == nil {
			t.Errorf("%q read as %+v", bad, got)
		}
	}
}

// TestManifestWithExpandedLayer: a layer repackaged for its sparse entries
// is reported under the sparse rule's kind, with the paths expanded; one
// repackaged for both rules under both kinds; the diff ID is the new tar's.
func TestManifestWithExpandedLayer(t *testing.T) {
	t.Parallel()
	dir := "testdata/manifest/docker-octet-stream"
	in, config := readFile(t, dir, "manifest.json"), readFile(t, dir, "config.json")
	plan, err := PlanManifest(MediaTypeDockerManifest, in)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		scan      LayerScan
		wantKinds []string
	}{
		{"sparse", LayerScan{Sparse: 3, Expanded: []string{"var/lib/big", "b"}}, []string{KindGNUSparse}},
		{"both", LayerScan{Stripped: 1, Removals: []XattrRemoval{{Path: "l", Keys: []string{userX}}}, Sparse: 1, Expanded: []string{"big"}},
			[]string{KindSymlinkXattrs, KindGNUSparse}},
	} {
		fix := LayerResult{LayerScan: tc.scan, Digest: digest.FromString("repacked"), Size: 42, DiffID: digest.FromString("diff"),
			MediaType: MediaTypeDockerLayerGzip}
		got, err := NormalizeManifest(ManifestInput{MediaType: MediaTypeDockerManifest, Manifest: in, Config: config,
			Layers: map[digest.Digest]LayerResult{plan.Layers[1].Digest: fix}, KeepConfigMediaType: true})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var kinds []string
		for _, c := range got.Changes {
			if c.Path == "layers[1]" {
				kinds = append(kinds, c.Kind)
			}
			if c.Kind == KindGNUSparse && (c.Details[0] != tc.scan.Expanded[0]+": written as a regular file, holes filled" ||
				c.Unlisted != tc.scan.Sparse-len(tc.scan.Expanded) || c.New != fix.Digest.String()) {
				t.Errorf("%s: %+v", tc.name, c)
			}
		}
		if !slices.Equal(kinds, tc.wantKinds) || !bytes.Contains(got.Config, []byte(fix.DiffID.String())) {
			t.Errorf("%s: kinds %q, changes %+v", tc.name, kinds, got.Changes)
		}
	}
}
