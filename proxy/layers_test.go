package proxy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// The layer seen in quay.io/ansible/creator-ee v0.5.0.
var xattrLayer = []regtest.File{
	{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
	{Name: "etc/krb5.conf.d/", Typeflag: tar.TypeDir, Mode: 0o755},
	{Name: "etc/krb5.conf.d/crypto-policies", Typeflag: tar.TypeSymlink, Linkname: "/etc/crypto-policies/back-ends/krb5.config",
		PAXRecords: map[string]string{"SCHILY.xattr.user.rpm": "x"}},
	{Name: "etc/motd", Content: []byte("hi\n"), PAXRecords: map[string]string{"SCHILY.xattr.user.keep": "y"}},
}

var baseLayer = []regtest.File{{Name: "bin/tool", Mode: 0o755, Content: []byte("#!/bin/sh\n")}}

func TestRepackagesSymlinkXattrLayer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)

	dgst, body := h.pullByTag(t, "ansible/creator-ee", "v0.5.0")
	if dgst == img.ManifestDigest {
		t.Fatal("served under the original digest")
	}
	// The scans' downloads admitted the client: no HEAD was sent beside them.
	if n := h.reg.Requests(http.MethodHead, "blobs"); n != 0 {
		t.Errorf("%d blob HEADs upstream for a cold pull, want 0", n)
	}
	var m, orig ocispec.Manifest
	json.Unmarshal(body, &m)
	json.Unmarshal(img.Manifest, &orig)
	if m.Layers[0].Digest != orig.Layers[0].Digest || m.Layers[1].Digest == orig.Layers[1].Digest || m.Config.Digest == orig.Config.Digest {
		t.Fatalf("manifest: %s", body)
	}
	config := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/blobs/"+m.Config.Digest.String(), nil)
	layer := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/blobs/"+m.Layers[1].Digest.String(), nil)
	if config.status != 200 || layer.status != 200 || digest.FromBytes(layer.body) != m.Layers[1].Digest || int64(len(layer.body)) != m.Layers[1].Size {
		t.Fatalf("config %d, layer %d", config.status, layer.status)
	}
	var cfg ocispec.Image
	json.Unmarshal(config.body, &cfg)
	raw := gunzip(t, layer.body)
	if cfg.RootFS.DiffIDs[1] != digest.FromBytes(raw) {
		t.Fatal("config diff_id does not match the repackaged layer")
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if hdr.Typeflag == tar.TypeSymlink && len(hdr.PAXRecords) > 0 {
			t.Fatalf("symlink still has %v", hdr.PAXRecords)
		}
		if hdr.Name == "etc/motd" && hdr.PAXRecords["SCHILY.xattr.user.keep"] != "y" {
			t.Fatal("a regular file lost its xattr")
		}
	}
	e := h.report(t)
	if len(e) != 1 || len(e[0].Changes) != 1 || e[0].Changes[0].Kind != "symlink-xattrs" ||
		e[0].Changes[0].Details[0] != "etc/krb5.conf.d/crypto-policies: SCHILY.xattr.user.rpm" {
		t.Fatalf("report: %+v", e)
	}
	if h.metric(t, "regnorm_layers_scanned_total", "") != 2 || h.metric(t, "regnorm_layers_repackaged_total", "") != 1 {
		t.Fatal("layer metrics")
	}

	// Another image on the same base: the base is not scanned again.
	h.push(t, "ansible/other", "v1", regtest.ImageOptions{}, baseLayer, oneFile)
	h.pullByTag(t, "ansible/other", "v1")
	if got := h.metric(t, "regnorm_layers_scanned_total", ""); got != 3 {
		t.Fatalf("layers scanned = %v, want 3 (the shared base once)", got)
	}
}

func TestBothProblemsInOneImage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.push(t, "library/both", "v1", legacy, baseLayer, xattrLayer)
	_, body := h.pullByTag(t, "library/both", "v1")
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	if m.Config.MediaType != regtest.MediaTypeDockerConfig {
		t.Fatal("config media type not fixed")
	}
	if e := h.report(t); len(e) != 1 || len(e[0].Changes) != 2 {
		t.Fatalf("report: %+v", e)
	}
}

func TestRulesCanBeSwitchedOff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{rules: &ruleset.Policy{}})
	img := h.push(t, "library/both", "v1", legacy, xattrLayer)
	if d, _ := h.pullByTag(t, "library/both", "v1"); d != img.ManifestDigest {
		t.Fatal("rewritten with every rule off")
	}
	if h.metric(t, "regnorm_layers_scanned_total", "") != 0 {
		t.Fatal("layers scanned with the rule off")
	}
}

// TestDeadline: normalization that outlives the deadline answers 503 with
// Retry-After, goes on, and the next request gets the result at once; a
// containerd without a header timeout waits instead. The clock is the
// test's, and upstream holds the layers until the test releases them, so
// nothing here depends on how fast the machine is.
func TestDeadline(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{clock: clk, deadline: 100 * time.Millisecond, patient: time.Minute})
	h.push(t, "library/slow", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	h.push(t, "library/slow2", "v1", regtest.ImageOptions{}, xattrLayer, oneFile)
	holdLayers := func() func() { return h.holdBlobs(t) }

	unblock := holdLayers()
	unidentified := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"crane/0.20"}}
	answer := make(chan response, 1)
	go func() { answer <- h.do(t, http.MethodHead, "/v2/library/slow/manifests/v1", unidentified) }()
	waitFor(t, "the request to wait for its deadline", func() bool { return clk.Waiting() == 1 })
	clk.Advance(100 * time.Millisecond)
	if r := <-answer; r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "10" {
		t.Fatalf("past the deadline: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	if h.metric(t, "regnorm_normalization_deadline_exceeded_total", "") != 1 {
		t.Fatal("deadline not counted")
	}
	// The work went on: once upstream delivers, the result is there.
	unblock()
	waitFor(t, "the background normalization", func() bool {
		return h.metric(t, "regnorm_normalizations_total", `result="normalized"`) == 1
	})
	if r := h.do(t, http.MethodHead, "/v2/library/slow/manifests/v1", unidentified); r.status != http.StatusOK {
		t.Fatalf("after the normalization: %d", r.status)
	}

	// containerd 1.6 has no header timeout: past the deadline it still
	// waits, and gets the normalized image.
	unblock = holdLayers()
	patient := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"containerd/1.6.8"}}
	go func() { answer <- h.do(t, http.MethodHead, "/v2/library/slow2/manifests/v1", patient) }()
	waitFor(t, "the request to wait for its deadline", func() bool { return clk.Waiting() == 1 })
	clk.Advance(time.Second)
	if n := clk.Waiting(); n != 1 {
		t.Fatalf("containerd 1.6's deadline passed after 1s: %d timers left", n)
	}
	unblock()
	if r := <-answer; r.status != http.StatusOK {
		t.Fatalf("containerd 1.6 should wait: %d", r.status)
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWarm: warmed images are answered from the verdicts warm stored:
// no normalization, no layer scan, on the request.
func TestWarm(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clock: newFakeClock()})
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	clean := h.push(t, "library/clean", "v1", regtest.ImageOptions{}, baseLayer)

	results, err := proxy.Client{Server: h.url}.Warm(context.Background(), []string{
		"docker.io/ansible/creator-ee:v0.5.0", "library/clean:v1", "evil.example.com/x:1",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := results[0]; r.OriginalDigest != img.ManifestDigest.String() || r.NormalizedDigest == "" || len(r.Changes) != 1 || r.Error != "" {
		t.Fatalf("warm creator-ee: %+v", r)
	}
	if r := results[1]; r.OriginalDigest != clean.ManifestDigest.String() || r.NormalizedDigest != "" || r.Error != "" {
		t.Fatalf("warm clean: %+v", r)
	}
	if r := results[2]; !strings.Contains(r.Error, "not configured") {
		t.Fatalf("warm unknown registry: %+v", r)
	}
	normalizations := h.metric(t, "regnorm_normalizations_total", "")
	scans := h.metric(t, "regnorm_layers_scanned_total", "")
	unidentified := http.Header{"Accept": containerdAccept["Accept"], "User-Agent": {"crane/0.20"}}
	r := h.do(t, http.MethodHead, "/v2/ansible/creator-ee/manifests/v0.5.0", unidentified)
	if r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != results[0].NormalizedDigest {
		t.Fatalf("after warm: %d %s", r.status, r.header.Get("Docker-Content-Digest"))
	}
	if h.metric(t, "regnorm_normalizations_total", "") != normalizations || h.metric(t, "regnorm_layers_scanned_total", "") != scans {
		t.Fatal("the warmed image was normalized again on the request")
	}
}

// TestFailedLayerDownloadIsNoVerdict: a layer whose download breaks is not
// recorded as clean; once upstream recovers it is repackaged.
func TestFailedLayerDownloadIsNoVerdict(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	var m ocispec.Manifest
	json.Unmarshal(img.Manifest, &m)
	broken := m.Layers[1].Digest.String()
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, broken) {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(int(m.Layers[1].Size)))
		w.Write(img.Layers[1][:m.Layers[1].Size/2])
	})
	if r := h.do(t, http.MethodHead, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdAccept); r.status < 500 {
		t.Fatalf("with a broken layer download: %d, want a 5xx", r.status)
	}
	h.front.set(nil)
	dgst, _ := h.pullByTag(t, "ansible/creator-ee", "v0.5.0")
	if dgst == img.ManifestDigest || h.metric(t, "regnorm_layers_repackaged_total", "") != 1 {
		t.Fatal("after recovery the layer was not repackaged: a failed download was taken for a verdict")
	}
}
