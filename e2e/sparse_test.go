//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// gnuSparseLayer is a layer made by GNU tar -S --format=gnu, as a user's
// `tar -S` makes it: data/big, a 1 MiB file with holes ("head" at 0, "X"
// at 700000, "Z" at its last byte), written as a typeflag 'S' entry. It
// checks that tar wrote the entry it is meant to test.
func gnuSparseLayer(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	big := filepath.Join(dir, "data", "big")
	os.MkdirAll(filepath.Dir(big), 0o755)
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	for off, s := range map[int64]string{0: "head", 700000: "X", 1<<20 - 1: "Z"} {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	raw, err := exec.Command("tar", "-S", "--format=gnu", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@1700000000",
		"-C", dir, "-cf", "-", "data").Output()
	if err != nil {
		t.Fatalf("GNU tar: %v", err)
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	sparse := false
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		sparse = sparse || (hdr.Name == "data/big" && hdr.Typeflag == tar.TypeGNUSparse && hdr.Size == 1<<20)
	}
	if !sparse {
		t.Fatal("GNU tar wrote no typeflag 'S' entry for data/big")
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	return gz.Bytes()
}

// withLayer is img with a gzip layer appended, its diff ID in the config.
func withLayer(t *testing.T, img regtest.Image, layer []byte, diffID digest.Digest) regtest.Image {
	t.Helper()
	var m ocispec.Manifest
	var config ocispec.Image
	json.Unmarshal(img.Manifest, &m)
	json.Unmarshal(img.Config, &config)
	config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, diffID)
	img.Config, _ = json.Marshal(config)
	m.Config.Digest, m.Config.Size = digest.FromBytes(img.Config), int64(len(img.Config))
	m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: regtest.MediaTypeDockerLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))})
	img.Layers = append(img.Layers, layer)
	img.Manifest, _ = json.MarshalIndent(m, "", "   ")
	img.ManifestDigest = digest.FromBytes(img.Manifest)
	return img
}

// TestGNUSparseEntries: an image with a layer made by GNU tar -S fails on
// every containerd straight from the registry ("unhandled tar header type
// 83"); through regnorm the sparse file is a regular file with its holes
// filled, and the image is pulled and runs on 1.6.20, 1.6.8 and 2.3.4, the
// container reading the file's size and bytes past its holes. A fresh
// mirror makes the same variant; a mirror whose operator turned the rule
// off serves the original bytes to every version.
func TestGNUSparseEntries(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	bin, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	hello, err := regtest.BuildImage(regtest.ImageOptions{Entrypoint: []string{"/hello", "file", "/data/big", "0", "3", "699999", "700000", "1048575"}},
		[]regtest.File{{Name: "hello", Mode: 0o755, Content: bin}})
	if err != nil {
		t.Fatal(err)
	}
	layer := gnuSparseLayer(t)
	zr, _ := gzip.NewReader(bytes.NewReader(layer))
	diffID, _ := digest.FromReader(zr)
	img := withLayer(t, hello, layer, diffID)
	if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), "gnu/sparse", "v1", img); err != nil {
		t.Fatal(err)
	}
	// The rule is opt-in (its look at every layer holds up every first
	// answer): turned on here.
	const on = "normalize:\n  gnuSparse: true\n"
	proxyURL, _ := startRegnorm(t, registryURL, on)
	const want = `/data/big: 1048576 bytes, 6 not zero, 0: 'h', 3: 'd', 699999: '\x00', 700000: 'X', 1048575: 'Z'`

	fixed := map[string]string{}
	for _, kind := range []containerdKind{containerd1620, containerd168, containerd234} {
		t.Run(kind.name, func(t *testing.T) {
			// The failing direct pull on a node of its own: the base layer's
			// snapshot it leaves behind is taken by containerd's garbage
			// collector under the next pull ("parent snapshot ... does not
			// exist", seen on 1.6.8), as in TestSymlinkXattrImages.
			probe := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL, Direct: []string{registryHost}})
			_, err := probe.pull(t, registryHost+"/gnu/sparse:v1")
			if err == nil || !strings.Contains(err.Error(), "unhandled tar header type 83") {
				t.Fatalf("direct pull: got %v, want 'unhandled tar header type 83'", err)
			}
			t.Logf("containerd %s straight from the registry: %v", kind.name, err)
			node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL})
			ref := "docker.io/gnu/sparse:v1"
			if _, err := node.pull(t, ref); err != nil {
				t.Fatalf("pull through regnorm: %v", err)
			}
			if got := node.run(t, ref); got != want {
				t.Fatalf("container printed %q, want %q", got, want)
			}
			fixed[kind.name] = node.repoDigest(t, ref)
			if fixed[kind.name] == img.ManifestDigest.String() {
				t.Fatal("pulled the original")
			}
			t.Logf("containerd %s through regnorm: %s (original %s): %s", kind.name, fixed[kind.name], img.ManifestDigest, want)
		})
	}
	// One transform for all three (1.6.8's rules add the symlink rule,
	// which finds nothing here): the same bytes.
	if fixed["1.6.8"] != fixed["1.6.20"] || fixed["2.3.4"] != fixed["1.6.20"] {
		t.Fatalf("variants %v, want one", fixed)
	}

	// The variant: the sparse layer and its diff ID, nothing else; the same
	// on a fresh mirror.
	path := "/v2/gnu/sparse/manifests/v1?ns=docker.io"
	variant := headAs(t, proxyURL, path, "containerd/2.3.4")
	if variant != fixed["2.3.4"] {
		t.Fatalf("HEAD gives %s, the node pulled %s", variant, fixed["2.3.4"])
	}
	fresh, _ := startRegnorm(t, registryURL, on)
	for _, ua := range []string{"containerd/2.3.4", "containerd/1.6.8"} {
		if again := headAs(t, fresh, path, ua); again != variant {
			t.Fatalf("%s: a fresh mirror made %s, the first %s", ua, again, variant)
		}
	}
	var orig, m ocispec.Manifest
	json.Unmarshal(img.Manifest, &orig)
	json.Unmarshal(getBody(t, proxyURL+"/v2/gnu/sparse/manifests/"+variant+"?ns=docker.io"), &m)
	if len(m.Layers) != 2 || m.Layers[0].Digest != orig.Layers[0].Digest || m.Layers[1].Digest == orig.Layers[1].Digest || m.Layers[1].MediaType != orig.Layers[1].MediaType {
		t.Fatalf("variant layers %+v, original %+v", m.Layers, orig.Layers)
	}
	blob := getBody(t, proxyURL+"/v2/gnu/sparse/blobs/"+m.Layers[1].Digest.String()+"?ns=docker.io")
	zr, err = gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	seen := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the variant's layer: %v", err)
		}
		if hdr.Typeflag == tar.TypeGNUSparse || (hdr.Name == "data/big" && (hdr.Typeflag != tar.TypeReg || hdr.Size != 1<<20)) {
			t.Fatalf("the variant's layer has %+v", hdr)
		}
		seen = seen || hdr.Name == "data/big"
	}
	if !seen {
		t.Fatal("the variant's layer has no data/big")
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="gnu-sparse"`); n != 2 {
		t.Fatalf("gnu-sparse rewrites = %v, want 2 (1.6.8's variant and the one of 1.6.20 and 2.3.4)", n)
	}
	report := string(getBody(t, proxyURL+"/api/v1/rewrites"))
	if !strings.Contains(report, `"gnu-sparse"`) || !strings.Contains(report, "data/big: written as a regular file, holes filled") {
		t.Fatalf("report: %s", report)
	}
	page := string(getBody(t, proxyURL+"/status"))
	if !strings.Contains(page, "gnu-sparse") || !strings.Contains(page, "data/big: written as a regular file, holes filled") || !strings.Contains(page, variant) {
		t.Fatal("the status page does not name the rule's change")
	}

	// By default the rule is off: every version gets the original, byte
	// for byte.
	off, _ := startRegnorm(t, registryURL, "")
	for _, ua := range []string{"containerd/1.6.20", "containerd/1.6.8", "containerd/2.3.4"} {
		if got := headAs(t, off, path, ua); got != img.ManifestDigest.String() {
			t.Fatalf("%s with the rule off (the default): %s, want the original %s", ua, got, img.ManifestDigest)
		}
	}
	if got := getBody(t, off+"/v2/gnu/sparse/manifests/"+img.ManifestDigest.String()+"?ns=docker.io"); !bytes.Equal(got, img.Manifest) {
		t.Fatal("with the rule off, the manifest differs from the upstream's bytes")
	}
}
