package proxy_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/recent"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/rewrite"
)

// readinessOf is every image of GET /api/v1/readiness for a containerd
// version, by repository, with the counts by status.
func readinessOf(t *testing.T, h *harness, version string) (map[string]proxy.ImageReadiness, map[string]int) {
	t.Helper()
	ans, err := proxy.Client{Server: h.url}.Readiness(context.Background(), version, nil, 1)
	if err != nil {
		t.Fatalf("readiness for %s: %v", version, err)
	}
	if ans.Pages != 1 || ans.Total != len(ans.Images) {
		t.Fatalf("readiness for %s: %d images of %d on %d pages", version, len(ans.Images), ans.Total, ans.Pages)
	}
	byRepo := map[string]proxy.ImageReadiness{}
	for _, img := range ans.Images {
		byRepo[img.Repository] = img
	}
	return byRepo, ans.Counts
}

// wantReadiness is what readiness says of one image.
type wantReadiness struct {
	status, rules string
	variant       digest.Digest
}

func checkReadiness(t *testing.T, h *harness, version string, want map[string]wantReadiness) {
	t.Helper()
	got, counts := readinessOf(t, h, version)
	if len(got) != len(want) {
		t.Errorf("containerd %s: readiness lists %d images, want %d: %+v", version, len(got), len(want), got)
	}
	wantCounts := map[string]int{"ready": 0, "not-ready": 0, "unknown": 0, "clean": 0}
	for repo, w := range want {
		wantCounts[w.status]++
		g, ok := got[repo]
		if !ok {
			t.Errorf("containerd %s: %s is not listed", version, repo)
			continue
		}
		if g.Status != w.status || g.Rules != w.rules || g.VariantDigest != w.variant.String() || !g.Cached || g.Upstream != "docker.io" || len(g.Tags) != 1 || g.Tags[0] != "v1" {
			t.Errorf("containerd %s: %s is %+v; want %s under %q, variant %q, tag v1", version, repo, g, w.status, w.rules, w.variant)
		}
	}
	for status, n := range wantCounts {
		if counts[status] != n {
			t.Errorf("containerd %s: counts %v, want %v", version, counts, wantCounts)
			break
		}
	}
}

// TestUpgradeReadiness: a fleet on containerd 1.7.20 pulls by tag the
// hidden-style cases of the e2e suite: a schema 1 image (2.0 and later
// cannot pull it; 1.x converts it itself), one with an octet-stream config
// (1.4 and every later version, 2.x included, need it retyped) and one with
// Docker's zstd layer type (1.5 – 1.7 only). Readiness for 2.1 then says
// the schema 1 image would fail and was never checked (unknown), the
// octet-stream one has its variant ready (the one 1.7 got: same rules), and
// the zstd one is unknown (2.1 needs only the diff IDs check of it, never
// made); for 1.6.8, which needs no schema 1 rule, the schema 1 image is
// clean. `warm --not-ready` for 2.1 (proxy.Client.NotReady, then warm)
// makes what was missing: the schema 1 image is then ready with the very
// variant a 2.1 node gets, and the zstd one clean. The status page counts
// the same, for the versions the fleet may move to and the one asked.
func TestUpgradeReadiness(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	pushSchema1(t, h, "library/old", "v1")
	h.push(t, "library/legacy", "v1", legacy, oneFile)
	zstd := h.push(t, "buildkit/app", "v1", regtest.ImageOptions{LayerMediaType: rewrite.MediaTypeDockerLayerZstd}, baseLayer)

	fleet := containerdHeader("1.7.20")
	headDigest(t, h, "/v2/library/old/manifests/v1", fleet)
	legacyVariant := headDigest(t, h, "/v2/library/legacy/manifests/v1", fleet)
	if got := headDigest(t, h, "/v2/buildkit/app/manifests/v1", fleet); got == zstd.ManifestDigest {
		t.Fatal("containerd 1.7.20 got the Docker zstd image unfixed")
	}

	checkReadiness(t, h, "2.1", map[string]wantReadiness{
		"library/old":    {status: "unknown", rules: "schema1"},
		"library/legacy": {status: "ready", rules: "config-media-type,diff-ids", variant: legacyVariant},
		"buildkit/app":   {status: "unknown", rules: "diff-ids"},
	})
	checkReadiness(t, h, "1.6.8", map[string]wantReadiness{
		"library/old":    {status: "clean", rules: "none"},
		"library/legacy": {status: "unknown", rules: "config-media-type,symlink-xattrs,diff-ids"},
		"buildkit/app":   {status: "unknown", rules: "symlink-xattrs,zstd-media-type,diff-ids"},
	})

	c := proxy.Client{Server: h.url}
	images, err := c.NotReady(context.Background(), []string{"2.1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 2 || !strings.HasPrefix(images[0], "docker.io/") || !strings.Contains(images[0], "@sha256:") {
		t.Fatalf("not ready for 2.1: %v; want the schema 1 and zstd images by digest", images)
	}
	results, err := c.Warm(context.Background(), images, []string{"2.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Error != "" {
			t.Fatalf("warming %s: %s", r.Image, r.Error)
		}
	}

	// The status page, as the fleet (one 1.7 node) has it: the 2.x
	// versions share one rule set, one row; 1.6.8 is asked.
	// Counts are made only for the version asked; the others link to it.
	section := func(asked string) string {
		page := string(h.do(t, http.MethodGet, "/status?containerd="+asked, nil).body)
		flat := regexp.MustCompile(`>\s+<`).ReplaceAllString(page, "><")
		_, flat, _ = strings.Cut(flat, `<section id="readiness">`)
		flat, _, _ = strings.Cut(flat, "</section>")
		return flat
	}
	flat := section("1.6.8")
	for _, row := range []string{
		// not-ready, unknown, ready, clean
		`<td>2.0, 2.1, 2.2, 2.3</td><td colspan="4"><a href="/status?containerd=2.0#readiness">check</a></td>`,
		`<td>1.6.8</td><td>0</td><td class="warn">2</td><td>0</td><td>1</td>`,
	} {
		if !strings.Contains(flat, row) {
			t.Errorf("the status page has no readiness row %s", row)
		}
	}
	if row := `<td>2.0, 2.1, 2.2, 2.3</td><td>0</td><td>0</td><td>2</td><td>1</td>`; !strings.Contains(section("2.1"), row) {
		t.Errorf("the status page asked for 2.1 has no readiness row %s", row)
	}
	if strings.Contains(flat, "<td>1.7") {
		t.Error("the status page checks the fleet's own version, 1.7, as one it may move to")
	}

	schema1Variant := headDigest(t, h, "/v2/library/old/manifests/v1", containerdHeader("2.1.0"))
	checkReadiness(t, h, "2.1", map[string]wantReadiness{
		"library/old":    {status: "ready", rules: "schema1", variant: schema1Variant},
		"library/legacy": {status: "ready", rules: "config-media-type,diff-ids", variant: legacyVariant},
		"buildkit/app":   {status: "clean", rules: "diff-ids"},
	})
	if images, err := c.NotReady(context.Background(), []string{"2.1", "2.3"}); err != nil || len(images) != 0 {
		t.Fatalf("not ready for 2.1 or 2.3 after warming: %v %v", images, err)
	}

}

// TestReadinessIsTheReports: readiness is refused, as the rewrite report
// is, when the report is protected; a bad version is a 400.
func TestReadinessIsTheReports(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{clientAuth: &proxy.ClientAuth{
		Tokens:        [][sha256.Size]byte{sha256.Sum256([]byte("robot-token"))},
		ProtectReport: true,
	}})
	for _, tt := range []struct {
		path   string
		header http.Header
		want   int
	}{
		{"/api/v1/rewrites", nil, http.StatusUnauthorized},
		{"/api/v1/readiness?containerd=2.1", nil, http.StatusUnauthorized},
		{"/api/v1/readiness?containerd=2.1", bearer("robot-token"), http.StatusOK},
		{"/api/v1/readiness", bearer("robot-token"), http.StatusBadRequest},
		{"/api/v1/readiness?containerd=two", bearer("robot-token"), http.StatusBadRequest},
		{"/api/v1/readiness?containerd=2.1&status=broken", bearer("robot-token"), http.StatusBadRequest},
	} {
		r := h.do(t, http.MethodGet, tt.path, tt.header)
		if r.status != tt.want {
			t.Errorf("%s: %d, want %d (%s)", tt.path, r.status, tt.want, r.body)
		}
		if tt.want == http.StatusUnauthorized && r.ociError(t) != errcode.Unauthorized {
			t.Errorf("%s: %s", tt.path, r.body)
		}
	}
}

// TestReadinessOfARemovedVariant: a recorded verdict whose variant manifest
// is no longer in the cache is not-ready (the next pull makes it again),
// and warm --not-ready lists it and makes it ready again. What readiness
// says is kept for recent.TTL, and read anew after it.
func TestReadinessOfARemovedVariant(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour, clock: clock})
	h.push(t, "library/legacy", "v1", legacy, oneFile)
	variant := headDigest(t, h, "/v2/library/legacy/manifests/v1", containerdHeader("2.3.4"))
	ready := map[string]wantReadiness{"library/legacy": {status: "ready", rules: "config-media-type,diff-ids", variant: variant}}
	checkReadiness(t, h, "2.1", ready)

	if err := os.Remove(filepath.Join(h.root, "manifests", variant.Algorithm().String(), variant.Encoded()[:2], variant.Encoded())); err != nil {
		t.Fatal(err)
	}
	checkReadiness(t, h, "2.1", ready) // within recent.TTL
	clock.Advance(recent.TTL)
	checkReadiness(t, h, "2.1", map[string]wantReadiness{"library/legacy": {status: "not-ready", rules: "config-media-type,diff-ids", variant: variant}})

	c := proxy.Client{Server: h.url}
	images, err := c.NotReady(context.Background(), []string{"2.1"})
	if err != nil || len(images) != 1 || !strings.HasPrefix(images[0], "docker.io/library/legacy@sha256:") {
		t.Fatalf("not ready for 2.1: %v %v", images, err)
	}
	if res, err := c.Warm(context.Background(), images, []string{"2.1"}); err != nil || res[0].Error != "" || res[0].Variants[0].NormalizedDigest != variant.String() {
		t.Fatalf("warm: %+v %v", res, err)
	}
	checkReadiness(t, h, "2.1", ready)
}
