//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// blobCounter relays to a registry and counts blob GETs per digest.
type blobCounter struct {
	relay http.Handler
	mu    sync.Mutex
	gets  map[string]int
}

func (c *blobCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if i := strings.Index(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		c.mu.Lock()
		c.gets[r.URL.Path[i+len("/blobs/"):]]++
		c.mu.Unlock()
	}
	c.relay.ServeHTTP(w, r)
}

func envOr[T int | time.Duration](name string, def T, parse func(string) (T, error)) T {
	if v, err := parse(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// TestLoad: many clients pull a mix of cached and cold images for a fixed
// time (REGNORM_LOAD_DURATION, default 15s; REGNORM_LOAD_CLIENTS, default
// 32). It prints throughput, cached manifest HEAD latency, errors,
// upstream requests per distinct blob and regnorm's peak memory, and fails
// on any error or on a blob fetched from upstream more than once.
func TestLoad(t *testing.T) {
	duration := envOr("REGNORM_LOAD_DURATION", 15*time.Second, time.ParseDuration)
	clients := envOr("REGNORM_LOAD_CLIENTS", 32, strconv.Atoi)
	registryURL, _ := startRegistry(t)
	target, _ := url.Parse(registryURL)
	counter := &blobCounter{relay: httputil.NewSingleHostReverseProxy(target), gets: map[string]int{}}
	upstreamURL := serveLocal(t, counter)

	// Every fourth image has a layer to repackage, so normalization runs
	// under load too.
	push := func(repo string, i int) {
		files := []regtest.File{{Name: "data", Content: regtest.RandomBytes(1 << 20), Mode: 0o644}}
		if i%4 == 0 {
			files = append(files, regtest.File{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "data",
				PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}})
		}
		img, err := regtest.BuildImage(regtest.ImageOptions{}, files, []regtest.File{{Name: "more", Content: regtest.RandomBytes(512 << 10)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := (&regtest.Client{Base: registryURL}).PushImage(context.Background(), repo, "v1", img); err != nil {
			t.Fatal(err)
		}
	}
	const warmImages, coldImages = 4, 60
	for i := range warmImages {
		push(fmt.Sprintf("load/warm%d", i), i)
	}
	for i := range coldImages {
		push(fmt.Sprintf("load/cold%d", i), i)
	}
	proxyURL, p := startRegnorm(t, upstreamURL, "")
	ctx := context.Background()
	for i := range warmImages {
		if _, err := pull(ctx, proxyURL, fmt.Sprintf("load/warm%d", i), "v1"); err != nil {
			t.Fatal(err)
		}
	}

	var (
		pulls, coldPulls, bytes atomic.Int64
		nextCold                atomic.Int64
		mu                      sync.Mutex
		errs                    []error
		heads                   []time.Duration
	)
	runCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for runCtx.Err() == nil {
				repo := fmt.Sprintf("load/warm%d", rng.IntN(warmImages))
				cold := false
				if rng.IntN(3) == 0 {
					// Two clients in a row get the same cold image.
					if n := nextCold.Add(1) / 2; n < coldImages {
						repo, cold = fmt.Sprintf("load/cold%d", n), true
					}
				}
				// Half the clients need the layer rule.
				ua := "containerd/1.6.20"
				if c%2 == 0 {
					ua = "containerd/1.6.8"
				}
				res, err := pullAs(ctx, ua, proxyURL, repo, "v1")
				lat, herr := headLatencies(ctx, proxyURL, fmt.Sprintf("load/warm%d", rng.IntN(warmImages)), "v1", 1, 4)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", repo, err))
				}
				if herr != nil {
					errs = append(errs, herr)
				}
				heads = append(heads, lat...)
				mu.Unlock()
				pulls.Add(1)
				bytes.Add(res.bytes)
				if cold {
					coldPulls.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	slices.Sort(heads)
	pct := func(q float64) time.Duration { return heads[int(q*float64(len(heads)-1))] }
	counter.mu.Lock()
	maxGets, blobs := 0, len(counter.gets)
	for _, n := range counter.gets {
		maxGets = max(maxGets, n)
	}
	counter.mu.Unlock()
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	peak := "?"
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			peak = strings.TrimSpace(v)
		}
	}
	fmt.Printf("\nLOAD: %d clients for %s\n", clients, elapsed.Round(time.Millisecond))
	fmt.Printf("  pulls:                 %d (%d cold), %.1f pulls/s, %.1f MB/s\n", pulls.Load(), coldPulls.Load(),
		float64(pulls.Load())/elapsed.Seconds(), float64(bytes.Load())/elapsed.Seconds()/1e6)
	fmt.Printf("  cached manifest HEAD:  p50 %s, p99 %s (%d requests)\n", pct(0.5).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), len(heads))
	fmt.Printf("  errors:                %d\n", len(errs))
	fmt.Printf("  upstream GETs per blob: at most %d (%d distinct blobs)\n", maxGets, blobs)
	fmt.Printf("  regnorm peak RSS:      %s\n\n", peak)
	if len(errs) > 0 {
		t.Errorf("%d errors, first: %v", len(errs), errs[0])
	}
	if maxGets != 1 {
		t.Errorf("a blob was fetched from upstream %d times; want 1", maxGets)
	}
	if coldPulls.Load() == 0 {
		t.Error("no cold pull happened: the test measured only the cache")
	}
}
