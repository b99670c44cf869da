package proxy_test

import (
	"context"
	"net/http"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/fleet"
)

// nodeHeader is containerd's request header on a node: its version, and
// the node's name as node-config writes it into hosts.toml.
func nodeHeader(version, node string) http.Header {
	h := containerdHeader(version)
	h.Set(fleet.NodeHeader, node)
	return h
}

// reportFleet has node-config report a node of each of these containerd
// versions, named after it, reading the hosts.toml files.
func (h *harness) reportFleet(t testing.TB, nodes map[string]string) {
	t.Helper()
	for node, version := range nodes {
		rep := cache.NodeReport{Node: node, Address: "127.0.0.1", ContainerdVersion: "v" + version, ReadsHostsToml: true,
			HostsDir: fleet.DefaultHostsDir, ConfigVersion: 2}
		if err := h.reporter().ReportNode(context.Background(), rep); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPremadeVariantsForTheFleet: a fleet of a containerd 1.6.8 node and a
// 2.3.4 node. When the 2.3.4 node pulls a cold image that 1.6.8 cannot
// unpack (a symlink with xattrs), the variant 1.6.8 needs is made in the
// background; the 1.6.8 node's first pull of the image then gets that
// variant from its recorded verdict: no normalization is computed, no
// layer repackaged, no 503, on its request. The 1.6.8 node's own pull of
// another image had the 2.3.4 variant of that one made (clean) the same
// way, and the work counts each variant once.
func TestPremadeVariantsForTheFleet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{premadeQueue: 8, tagTTL: time.Hour})
	h.reportFleet(t, map[string]string{"old-node": "1.6.8", "new-node": "2.3.4"})
	h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile)
	xattr := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)

	headDigest(t, h, "/v2/library/app/manifests/v1", nodeHeader("1.6.8", "old-node"))
	waitFor(t, "the 2.3.4 variant of library/app to be made", func() bool {
		return h.metric(t, "regnorm_premade_variants_total", `result="clean"`) == 1
	})

	if got := headDigest(t, h, "/v2/ansible/creator-ee/manifests/v0.5.0", nodeHeader("2.3.4", "new-node")); got != xattr.ManifestDigest {
		t.Fatalf("containerd 2.3.4 got %s, want the original %s", got, xattr.ManifestDigest)
	}
	waitFor(t, "the 1.6.8 variant of the xattr image to be made", func() bool {
		return h.metric(t, "regnorm_premade_variants_total", `result="made"`) == 1
	})

	counters := []string{"regnorm_normalizations_total", "regnorm_layers_repackaged_total", "regnorm_normalization_deadline_exceeded_total"}
	before := map[string]float64{}
	for _, name := range counters {
		before[name] = h.metric(t, name, "")
	}
	r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/v0.5.0", nodeHeader("1.6.8", "old-node"))
	if r.status != http.StatusOK {
		t.Fatalf("containerd 1.6.8's first pull: %d %s", r.status, r.body)
	}
	if got := digest.FromBytes(r.body); got == xattr.ManifestDigest {
		t.Fatal("containerd 1.6.8 got the xattr image unfixed")
	}
	for _, name := range counters {
		if got := h.metric(t, name, ""); got != before[name] {
			t.Errorf("%s moved from %v to %v on containerd 1.6.8's first pull: its variant was not ready", name, before[name], got)
		}
	}
	for result, want := range map[string]float64{"made": 1, "clean": 1, "dropped": 0, "busy": 0, "error": 0} {
		if got := h.metric(t, "regnorm_premade_variants_total", `result="`+result+`"`); got != want {
			t.Errorf("regnorm_premade_variants_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	if got := h.metric(t, "regnorm_premade_queued", ""); got != 0 {
		t.Errorf("regnorm_premade_queued = %v, want 0", got)
	}
}

// BenchmarkOldClientFirstAnswer: a containerd 2.3.4 node pulls a cold
// image by tag, then a 1.6.8 node pulls it, whose variant repackages a
// layer (a symlink with xattrs beside 48 MB of data, or
// REGNORM_BENCH_PREMADE_MB): through a regnorm with pre-made variants (the
// fleet knows the 1.6.8 node, and the 1.6.8 node asks once they are made)
// and through one without, side by side, a fresh image each round. Reports
// the first answer (HEAD by tag) of each node, and the ratios of the old
// node's to the modern one's.
//
//	go test ./proxy -run '^$' -bench OldClientFirstAnswer -benchtime 3x
func BenchmarkOldClientFirstAnswer(b *testing.B) {
	size := 48 << 20
	if v, err := strconv.Atoi(os.Getenv("REGNORM_BENCH_PREMADE_MB")); err == nil && v > 0 {
		size = v << 20
	}
	with := newHarness(b, harnessOptions{premadeQueue: 8, tagTTL: time.Hour})
	with.reportFleet(b, map[string]string{"old-node": "1.6.8", "new-node": "2.3.4"})
	without := newHarness(b, harnessOptions{tagTTL: time.Hour})
	first := func(h *harness, repo, version, node string) time.Duration {
		start := time.Now()
		r := h.do(b, http.MethodHead, "/v2/"+repo+"/manifests/v1", nodeHeader(version, node))
		if r.status != http.StatusOK {
			b.Fatalf("containerd %s's first answer: %d", version, r.status)
		}
		return time.Since(start)
	}
	var modernWith, modernWithout, oldWith, oldWithout time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		repo := "bench/premade" + strconv.Itoa(i)
		layer := append(slices.Clone(xattrLayer), regtest.File{Name: "data", Content: regtest.RandomBytes(size)})
		img, err := regtest.BuildImage(regtest.ImageOptions{}, baseLayer, layer)
		if err != nil {
			b.Fatal(err)
		}
		for _, h := range []*harness{with, without} {
			if err := h.reg.Client().PushImage(context.Background(), repo, "v1", img); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		modernWith += first(with, repo, "2.3.4", "new-node")
		modernWithout += first(without, repo, "2.3.4", "new-node")
		b.StopTimer()
		waitFor(b, "the 1.6.8 variant to be made", func() bool {
			return with.metric(b, "regnorm_premade_variants_total", `result="made"`) == float64(i+1)
		})
		b.StartTimer()
		if i%2 == 0 {
			oldWith += first(with, repo, "1.6.8", "old-node")
			oldWithout += first(without, repo, "1.6.8", "old-node")
		} else {
			oldWithout += first(without, repo, "1.6.8", "old-node")
			oldWith += first(with, repo, "1.6.8", "old-node")
		}
	}
	n := float64(b.N)
	b.ReportMetric(modernWith.Seconds()/n, "modern_s")
	b.ReportMetric(oldWithout.Seconds()/n, "old_without_s")
	b.ReportMetric(oldWith.Seconds()/n, "old_with_s")
	b.ReportMetric(float64(oldWithout)/float64(modernWithout), "old/modern_without")
	b.ReportMetric(float64(oldWith)/float64(modernWith), "old/modern_with")
}
