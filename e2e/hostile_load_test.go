//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestHostileLoad: clients that ask for random digests, for many distinct
// cold blobs at once, and that hang up mid-download, against a regnorm with
// small bounds on a slow upstream link. It samples regnorm's metrics and
// memory while they run and prints the peaks; it fails if a download,
// queue or spool bound is ever exceeded, if a client ever gets wrong bytes,
// or if work a departed client started is left running. Bounded in count
// and time (REGNORM_HOSTILE_DURATION, default 10s).
func TestHostileLoad(t *testing.T) {
	duration := envOr("REGNORM_HOSTILE_DURATION", 10*time.Second, time.ParseDuration)
	const (
		downloads, queued = 4, 8
		spool             = 4 << 20
		blobs, blobSize   = 48, 1 << 20
		clients           = 48
	)
	registryURL, _ := startRegistry(t)
	// 40 MB/s shared by every download: each takes a while, so many are in
	// flight at once.
	upstreamURL := serveLocal(t, newRelay(registryURL, 40e6, 5*time.Millisecond))
	c := &regtest.Client{Base: registryURL}
	var cold []digest.Digest
	for range blobs {
		b := regtest.RandomBytes(blobSize)
		if err := c.PushBlob(context.Background(), "hostile/x", b); err != nil {
			t.Fatal(err)
		}
		cold = append(cold, digest.FromBytes(b))
	}
	dir := t.TempDir()
	proxyURL, p := startRegnorm(t, upstreamURL, fmt.Sprintf(`maxDownloads: %d
maxQueuedDownloads: %d
spoolMaxSize: %d
cache:
  driver: filesystem
  filesystem:
    rootDirectory: %s
`, downloads, queued, spool, filepath.Join(dir, "cache")))
	rssBefore := vmField(t, p.cmd.Process.Pid, "VmRSS:")

	// Running and waiting downloads are read from one scrape, which sees
	// them at one moment: the bound is on both together, and on the
	// running ones.
	var peakRunning, peakQueued, peakInFlight, peakSpool, peakRSS atomic.Int64
	sample := func() {
		scraped := scrape(t, proxyURL)
		running := int64(metricIn(t, scraped, "regnorm_upstream_inflight_fetches"))
		waiting := int64(metricIn(t, scraped, "regnorm_upstream_queued_fetches"))
		peakRunning.Store(max(peakRunning.Load(), running))
		peakQueued.Store(max(peakQueued.Load(), waiting))
		peakInFlight.Store(max(peakInFlight.Load(), running+waiting))
		peakSpool.Store(max(peakSpool.Load(), int64(metricIn(t, scraped, "regnorm_spool_bytes"))))
		peakRSS.Store(max(peakRSS.Load(), vmField(t, p.cmd.Process.Pid, "VmRSS:")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	var random, complete, refused, hungUp, wrong atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Timeout: time.Minute}
	for i := range clients {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				switch i % 3 {
				case 0: // random digests
					var b [32]byte
					rand.Read(b[:])
					resp, err := client.Get(proxyURL + "/v2/hostile/x/blobs/" + digest.NewDigestFromBytes(digest.SHA256, b[:]).String())
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						random.Add(1)
					}
				case 1: // distinct cold blobs, read whole and checked
					dgst := cold[(i*7+n)%len(cold)]
					resp, err := client.Get(proxyURL + "/v2/hostile/x/blobs/" + dgst.String())
					if err != nil {
						continue
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case resp.StatusCode == http.StatusServiceUnavailable:
						refused.Add(1)
						time.Sleep(100 * time.Millisecond)
					case resp.StatusCode == http.StatusOK && err == nil && digest.FromBytes(body) == dgst:
						complete.Add(1)
					case resp.StatusCode == http.StatusOK && err == nil:
						wrong.Add(1)
					}
				case 2: // hang up mid-download
					dgst := cold[(i*13+n)%len(cold)]
					reqCtx, stop := context.WithCancel(ctx)
					req, _ := http.NewRequestWithContext(reqCtx, http.MethodGet, proxyURL+"/v2/hostile/x/blobs/"+dgst.String(), nil)
					if resp, err := client.Do(req); err == nil {
						io.CopyN(io.Discard, resp.Body, 16<<10)
						resp.Body.Close()
						hungUp.Add(1)
					}
					stop()
				}
			}
		})
	}
	// The test's own goroutine samples (a failed sample may end the test)
	// while the clients run.
	for ctx.Err() == nil {
		sample()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	sample()
	// Work the departed clients started ends: the downloads nobody reads
	// are cancelled after their grace, the others finish; the spool goes
	// with the last request still sending from it, at once.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		scraped := scrape(t, proxyURL)
		running, waiting := metricIn(t, scraped, "regnorm_upstream_inflight_fetches"), metricIn(t, scraped, "regnorm_upstream_queued_fetches")
		if running+waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("two minutes after the last client left, %.0f downloads were still running and %.0f waiting", running, waiting)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(30 * time.Second)
	spoolLeft := metric(t, proxyURL, "regnorm_spool_bytes")
	for ; spoolLeft != 0 && time.Now().Before(deadline); spoolLeft = metric(t, proxyURL, "regnorm_spool_bytes") {
		time.Sleep(100 * time.Millisecond)
	}
	abandoned := metric(t, proxyURL, "regnorm_upstream_fetches_abandoned_total")
	rejected := metric(t, proxyURL, "regnorm_upstream_fetches_rejected_total")

	fmt.Printf("\nHOSTILE LOAD: %d clients for %s, bounds: %d downloads, %d queued, %d MiB spool\n", clients, duration, downloads, queued, spool>>20)
	fmt.Printf("  requests:            %d random digests, %d complete blobs, %d refused (503), %d hung up, %d wrong\n",
		random.Load(), complete.Load(), refused.Load(), hungUp.Load(), wrong.Load())
	fmt.Printf("  peak downloads:      %d running, %d queued, %d together\n", peakRunning.Load(), peakQueued.Load(), peakInFlight.Load())
	fmt.Printf("  peak spool:          %.1f MiB (left after: %.0f)\n", float64(peakSpool.Load())/(1<<20), spoolLeft)
	fmt.Printf("  downloads abandoned: %.0f; refused: %.0f\n", abandoned, rejected)
	fmt.Printf("  regnorm RSS:         %d MiB before, %d MiB peak\n\n", rssBefore>>10, peakRSS.Load()>>10)

	if peakRunning.Load() > downloads || peakInFlight.Load() > downloads+queued || peakSpool.Load() > spool {
		t.Errorf("a bound was exceeded: %d running (max %d), %d running and waiting (max %d), %d spool bytes (max %d)",
			peakRunning.Load(), downloads, peakInFlight.Load(), downloads+queued, peakSpool.Load(), spool)
	}
	if wrong.Load() > 0 {
		t.Errorf("%d complete responses had wrong bytes", wrong.Load())
	}
	if complete.Load() == 0 || random.Load() == 0 || hungUp.Load() == 0 {
		t.Error("a kind of client made no request: the test measured less than it says")
	}
	if spoolLeft != 0 {
		t.Errorf("%.0f spool bytes still reserved 30s after the last download ended", spoolLeft)
	}
}

// vmField reads a /proc/PID/status field in kB.
func vmField(t *testing.T, pid int, field string) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
