//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestPullBenchmark measures regnorm against the mirror users would pick
// instead (distribution's registry in proxy mode) and against pulling
// straight from the upstream, side by side in one run, on 127.0.0.1. The
// upstream is the distribution registry binary behind a relay that limits
// bandwidth (50 MB/s) and adds latency (20 ms a request) to stand in for
// the internet; the client makes containerd's requests and verifies every
// digest, and one scenario is checked against a real containerd CRI pull.
//
// scripts/test.sh runs it small (20 MB image, one repetition) to keep it
// working; the full run (400 MB image, 3 repetitions, about 15 minutes
// before scenario 7, replicas on S3):
//
//	REGNORM_BENCH_FULL=1 scripts/test.sh   # or, with the tools installed:
//	REGNORM_BENCH_FULL=1 go test -tags e2e -run TestPullBenchmark -v -timeout 60m ./e2e/
//
// REGNORM_BENCH_BANDWIDTH_MB (MB/s) and REGNORM_BENCH_LATENCY (e.g. 50ms)
// change the relay. It prints a table and writes bench-results.json
// (REGNORM_BENCH_OUT).
func TestPullBenchmark(t *testing.T) {
	o := benchOptions{reps: 1, bandwidth: 50e6, latency: 20 * time.Millisecond, cleanMB: 20, xattrMB: 10, heads: 64 * 5,
		replicaClients: 12, ownerSamples: 3}
	if os.Getenv("REGNORM_BENCH_FULL") != "" {
		o = benchOptions{reps: 3, bandwidth: 50e6, latency: 20 * time.Millisecond, cleanMB: 400, xattrMB: 150, heads: 64 * 40,
			replicaClients: 30, ownerSamples: 10}
	}
	if v, err := strconv.ParseFloat(os.Getenv("REGNORM_BENCH_BANDWIDTH_MB"), 64); err == nil && v > 0 {
		o.bandwidth = v * 1e6
	}
	if v, err := time.ParseDuration(os.Getenv("REGNORM_BENCH_LATENCY")); err == nil && v >= 0 {
		o.latency = v
	}
	ctx := context.Background()
	upstreamURL, _ := startRegistry(t)
	imgs := seedBench(t, upstreamURL, o)
	rl := newRelay(upstreamURL, o.bandwidth, o.latency)
	relayURL := serveLocal(t, rl)

	// A contender's start gives a fresh, cold instance.
	type contender struct {
		name  string
		start func() (base string, stop func())
	}
	direct := contender{"direct", func() (string, func()) { return relayURL, func() {} }}
	distribution := contender{"distribution-proxy", func() (string, func()) {
		url, p := startRegistryProxy(t, relayURL)
		return url, p.stop
	}}
	regnorm := contender{"regnorm", func() (string, func()) { return startRegnormOn(t, relayURL) }}
	contenders := []contender{direct, distribution, regnorm}
	res := &results{Options: map[string]any{"reps": o.reps, "bandwidth_MBps": o.bandwidth / 1e6,
		"latency_ms": o.latency.Milliseconds(), "clean_MB": o.cleanMB, "xattr_MB": o.xattrMB}}
	must := func(r pullResult, err error) pullResult {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// 1. Cold pull of the clean image, empty caches.
	for range o.reps {
		for _, c := range contenders {
			base, stop := c.start()
			r := must(pull(ctx, base, "bench/clean", "v1"))
			stop()
			res.add("1 cold pull, clean image", c.name, r.total)
		}
	}
	// The same cold pull by a real containerd (CRI PullImage) through
	// regnorm, to check that the client above pulls as nodes do.
	for range o.reps {
		base, stop := regnorm.start()
		node := startContainerd(t, base)
		start := time.Now()
		if _, err := node.pull(t, "docker.io/bench/clean:v1"); err != nil {
			t.Fatalf("CRI pull: %v", err)
		}
		res.add("1 cold pull, clean image", "regnorm, containerd CRI", time.Since(start))
		node.proc.stop()
		stop()
	}

	// 2. Warm pull, against what the loopback link allows (the same requests
	// answered from memory), interleaved round by round so that drift on a
	// shared machine hits every contender alike; then 5. warm manifest HEAD
	// latency under 64 clients.
	warm := map[string]string{"loopback limit": serveLocal(t, imgs.memory)}
	var stops []func()
	for _, c := range contenders[1:] {
		base, stop := c.start()
		stops = append(stops, stop)
		must(pull(ctx, base, "bench/clean", "v1"))
		warm[c.name] = base
	}
	for range max(3*o.reps, 5) {
		for _, name := range []string{"distribution-proxy", "regnorm", "loopback limit"} {
			res.add("2 warm pull, clean image", name, must(pull(ctx, warm[name], "bench/clean", "v1")).total)
		}
	}
	for _, c := range contenders[1:] {
		lat, err := headLatencies(ctx, warm[c.name], "bench/clean", "v1", 64, o.heads)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(lat)
		res.add("5 warm manifest HEAD p50, 64 clients", c.name, lat[len(lat)/2])
		res.add("5 warm manifest HEAD p99, 64 clients", c.name, lat[len(lat)*99/100])
	}
	for _, stop := range stops {
		stop()
	}

	// 3. 20 clients pulling the same cold image at once.
	for _, c := range contenders {
		base, stop := c.start()
		before := rl.bytes.Load()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() {
				if _, err := pull(ctx, base, "bench/clean", "v1"); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		stop()
		close(errs)
		if err := <-errs; err != nil {
			t.Fatalf("20 pulls via %s: %v", c.name, err)
		}
		res.add("3 20 clients at once, clean image", c.name, time.Since(start))
		res.addBytes("3 upstream bytes for 20 clients", c.name, rl.bytes.Load()-before)
	}

	// 4. Cold pull of images that need normalization: regnorm against a
	// direct pull of the original and distribution's proxy, by a node that
	// needs the layer rule (1.6.8) and one that does not (2.3.4): the xattr
	// image is the original for 2.3.4, answered without a layer download.
	for _, img := range []string{"bench/legacy", "bench/xattr"} {
		for range o.reps {
			r := must(pull(ctx, relayURL, img, "v1"))
			res.add("4 cold pull, "+img, "direct (original)", r.total)
			res.add("4 first manifest answer, "+img, "direct (original)", r.firstManifest)
			base, stop := distribution.start()
			r = must(pull(ctx, base, img, "v1"))
			stop()
			res.add("4 cold pull, "+img, "distribution-proxy (original)", r.total)
			res.add("4 first manifest answer, "+img, "distribution-proxy (original)", r.firstManifest)
			for _, node := range []string{"2.3.4", "1.6.8"} {
				base, stop := regnorm.start()
				r := must(pullAs(ctx, "containerd/"+node, base, img, "v1"))
				stop()
				res.add("4 cold pull, "+img, "regnorm, containerd "+node, r.total)
				res.add("4 first manifest answer, "+img, "regnorm, containerd "+node, r.firstManifest)
			}
		}
	}

	// 6. Cold CRI pull of a schema 1 image from distribution v2.8.3 behind
	// the same relay: containerd 1.6.20 straight from it (1.x converts
	// schema 1 itself) against 2.3.4 through regnorm (which converts it).
	schema1URL := seedSchema1Bench(t, o)
	schema1Relay := serveLocal(t, newRelay(schema1URL, o.bandwidth, o.latency))
	for range o.reps {
		node := startContainerd(t, schema1Relay)
		start := time.Now()
		if _, err := node.pull(t, "docker.io/bench/schema1:v1"); err != nil {
			t.Fatalf("schema 1 pull on 1.6.20: %v", err)
		}
		res.add("6 cold CRI pull, schema 1 image", schema1Direct, time.Since(start))
		node.proc.stop()

		base, stop := startRegnormOn(t, schema1Relay)
		node = startContainerdVersion(t, containerd234, containerdOptions{Mirror: base})
		start = time.Now()
		if _, err := node.pull(t, "docker.io/bench/schema1:v1"); err != nil {
			t.Fatalf("schema 1 pull on 2.3.4 through regnorm: %v", err)
		}
		res.add("6 cold CRI pull, schema 1 image", schema1Regnorm, time.Since(start))
		node.proc.stop()
		stop()
	}

	// 7. Replicas sharing one S3 cache: upstream bytes for 1 and 3, and
	// the first byte of a cold blob through its owner and another replica.
	benchReplicas(t, ctx, res, upstreamURL, o)

	var table bytes.Buffer
	res.report(&table, imgs.cleanBytes)
	fmt.Print(table.String())
	out := os.Getenv("REGNORM_BENCH_OUT")
	if out == "" {
		out = "bench-results.json"
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// The one figure that is no timing: 20 clients cost regnorm one copy.
	if got := res.Bytes["3 upstream bytes for 20 clients"]["regnorm"]; float64(got) > 1.05*float64(imgs.cleanBytes) {
		t.Errorf("20 clients made regnorm fetch %d bytes upstream, more than one copy (%d)", got, imgs.cleanBytes)
	}
}

type benchOptions struct {
	reps             int
	bandwidth        float64 // bytes per second on the relay
	latency          time.Duration
	cleanMB, xattrMB int
	heads            int
	replicaClients   int // scenario 7's clients pulling at once
	ownerSamples     int // scenario 7's cold blobs through their owner, and through another replica
}

// seededImages is what the upstream holds, and an in-memory copy of the
// clean image for the loopback baseline.
type seededImages struct {
	memory     http.Handler
	cleanBytes int64
}

func seedBench(t *testing.T, registryURL string, o benchOptions) seededImages {
	t.Helper()
	c := &regtest.Client{Base: registryURL}
	// Random content: incompressible, so every megabyte is a megabyte on the link.
	var layers [][]regtest.File
	for _, share := range []int{40, 25, 15, 12, 8} {
		layers = append(layers, []regtest.File{{Name: fmt.Sprintf("data%d", share), Content: regtest.RandomBytes(o.cleanMB << 20 * share / 100)}})
	}
	clean, err := regtest.BuildImage(regtest.ImageOptions{}, layers...)
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := regtest.BuildImage(legacyConfig, []regtest.File{{Name: "data", Content: regtest.RandomBytes(2 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	xattr, err := regtest.BuildImage(regtest.ImageOptions{}, []regtest.File{
		{Name: "usr/lib/data", Content: regtest.RandomBytes(o.xattrMB << 20)},
		{Name: "etc/krb5.conf.d/crypto-policies", Typeflag: '2', Linkname: "/etc/crypto-policies/back-ends/krb5.config",
			PAXRecords: map[string]string{"SCHILY.xattr.user.rpm": "x"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for repo, img := range map[string]regtest.Image{"bench/clean": clean, "bench/legacy": legacy, "bench/xattr": xattr} {
		if err := c.PushImage(context.Background(), repo, "v1", img); err != nil {
			t.Fatal(err)
		}
	}
	s := seededImages{memory: memoryRegistry(clean)}
	for _, l := range clean.Layers {
		s.cleanBytes += int64(len(l))
	}
	return s
}

// seedSchema1Bench starts distribution v2.8.3 with a signed schema 1 image
// of xattrMB of random data (plus a throwaway step) and returns its URL.
func seedSchema1Bench(t *testing.T, o benchOptions) string {
	t.Helper()
	reg, err := regtest.StartRegistry2(registry2Bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	img, err := regtest.BuildSchema1(regtest.Schema1Options{Name: "bench/schema1", Tag: "v1", Cmd: []string{"/data"}},
		regtest.Schema1Layer{Files: []regtest.File{{Name: "data", Content: regtest.RandomBytes(o.xattrMB << 20)}}},
		regtest.Schema1Layer{Throwaway: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&regtest.Client{Base: reg.URL}).PushSchema1(context.Background(), "bench/schema1", "v1", img); err != nil {
		t.Fatal(err)
	}
	return reg.URL
}

// memoryRegistry answers the requests for one image from memory: the most
// a registry could do over this loopback link.
func memoryRegistry(img regtest.Image) http.Handler {
	blobs := map[string][]byte{img.ManifestDigest.String(): img.Manifest}
	for _, b := range append([][]byte{img.Config}, img.Layers...) {
		blobs[digestOf(b)] = b
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ref := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if ref == "v1" {
			ref = img.ManifestDigest.String()
		}
		b, ok := blobs[ref]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Docker-Content-Digest", ref)
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", regtest.MediaTypeDockerManifest)
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	})
}

func serveLocal(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// startRegnormOn starts a cold regnorm in front of upstream.
func startRegnormOn(t *testing.T, upstream string) (base string, stop func()) {
	url, p := startRegnorm(t, upstream, "")
	return url, p.stop
}
