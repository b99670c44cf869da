//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/internal/regtest"
)

// The contenders of scenario 7.
const (
	oneReplica    = "regnorm, 1 replica"
	threeReplicas = "regnorm, 3 replicas"
	owner         = "regnorm, owner"
	nonOwner      = "regnorm, non-owner"
)

// benchReplicas is scenario 7: regnorm replicas sharing one S3 cache
// (versitygw). o.replicaClients clients pull the cold clean image at once,
// spread evenly over one replica and then over three, each on a fresh
// cache: the upstream bytes of each (goal: one copy, 1.00× the image, for
// both). Then, side by side in one run on the three: the first byte of a
// GET of a cold blob through the replica that owns it and through one that
// asks the owner. A replica that asked an owner counts it
// (regnorm_replica_asks_total): the others owned the blob. The asked
// replica is taken in turn, so a third of the blobs are asked of their
// owner. One upstream URL for all: an upstream configured otherwise on one
// replica is not shared.
func benchReplicas(t *testing.T, ctx context.Context, res *results, registryURL string, o benchOptions) {
	t.Helper()
	rl := newRelay(registryURL, o.bandwidth, o.latency)
	upstream := serveLocal(t, rl)
	upstreams := []string{upstream, upstream, upstream}
	bucket := startS3Bucket(t)

	var group []replica
	for _, n := range []int{1, 3} {
		group = startReplicas(t, upstreams[:n], bucket.cacheYAML(fmt.Sprintf("bench-%d", n)))
		before := rl.bytes.Load()
		var wg sync.WaitGroup
		errs := make(chan error, o.replicaClients)
		for i := range o.replicaClients {
			wg.Go(func() {
				if _, err := pull(ctx, group[i%n].url, "bench/clean", "v1"); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			t.Fatalf("%d pulls through %d replicas: %v", o.replicaClients, n, err)
		}
		res.addBytes(fmt.Sprintf("7 upstream bytes, %d clients, replicas", o.replicaClients), map[int]string{1: oneReplica, 3: threeReplicas}[n],
			rl.bytes.Load()-before)
		if n == 1 {
			group[0].proc.stop()
		}
	}

	c := &regtest.Client{Base: registryURL}
	samples := map[string]int{}
	for i := 0; samples[owner] < o.ownerSamples || samples[nonOwner] < o.ownerSamples; i++ {
		if i == 20*o.ownerSamples {
			t.Fatalf("after %d cold blobs, %d were asked of their owner and %d of another replica", i, samples[owner], samples[nonOwner])
		}
		// Larger than a manifest may be: sent as it comes, not typed first.
		blob := regtest.RandomBytes(8 << 20)
		if err := c.PushBlob(ctx, "bench/blobs", blob); err != nil {
			t.Fatal(err)
		}
		dgst := digest.FromBytes(blob)
		path := "/v2/bench/blobs/blobs/" + dgst.String()
		asked := i % len(group)
		asks := func() float64 {
			return replicaMetrics(t, []string{scrape(t, group[asked].url)}, "regnorm_replica_asks_total", `kind="blob",outcome="ok"`)
		}
		before := asks()
		d, err := firstByte(ctx, group[asked].url+path, dgst)
		if err != nil {
			t.Fatal(err)
		}
		gets := 0
		for r, n := range rl.requests() {
			if r.method == http.MethodGet && r.path == path {
				gets += n
			}
		}
		if gets != 1 {
			t.Fatalf("blob %s through replica %d: the upstream saw %d GETs, want one", dgst, asked, gets)
		}
		who := owner
		if asks() > before {
			who = nonOwner
		}
		res.add("7 first byte of a cold blob, 3 replicas", who, d)
		samples[who]++
	}
}

// firstByte GETs url, and returns how long its first body byte took; the
// body must hash to want.
func firstByte(ctx context.Context, url string, want digest.Digest) (time.Duration, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("User-Agent", "containerd/1.6.20")
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	d := time.Since(start)
	h := sha256.New()
	h.Write(first)
	if _, err := io.Copy(h, resp.Body); err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != want {
		return 0, fmt.Errorf("GET %s: %w: it hashes to %s", url, errWrongContent, got)
	}
	return d, nil
}
