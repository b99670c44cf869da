package proxy_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
)

// BenchmarkWarmPull pulls a cached 5-layer image (100 MB, or
// REGNORM_BENCH_WARM_MB) the way
// containerd does (HEAD, manifest, config, layers three at a time, every
// byte hashed), with regnorm in this process so that -cpuprofile shows its
// share of a warm pull.
//
//	go test ./proxy -run '^$' -bench WarmPull -benchtime 20x -cpuprofile cpu.out
func BenchmarkWarmPull(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	total := 100 // MB, or REGNORM_BENCH_WARM_MB
	if v, err := strconv.Atoi(os.Getenv("REGNORM_BENCH_WARM_MB")); err == nil && v > 0 {
		total = v
	}
	var layers [][]regtest.File
	for _, share := range []int{40, 25, 15, 12, 8} {
		layers = append(layers, []regtest.File{{Name: "data", Content: regtest.RandomBytes(total << 20 * share / 100)}})
	}
	h.push(b, "bench/clean", "v1", regtest.ImageOptions{}, layers...)
	pull := func() {
		_, body := h.pullByTag(b, "bench/clean", "v1")
		var m ocispec.Manifest
		json.Unmarshal(body, &m)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 3)
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				resp, err := http.Get(h.url + "/v2/bench/clean/blobs/" + d.Digest.String())
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				hash := sha256.New()
				if n, err := io.Copy(hash, resp.Body); err != nil || n != d.Size || fmt.Sprintf("sha256:%x", hash.Sum(nil)) != d.Digest.String() {
					b.Errorf("blob %s: %d bytes, %v", d.Digest, n, err)
				}
			})
		}
		wg.Wait()
	}
	pull() // fill the cache
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pull()
	}
	b.SetBytes(int64(total) << 20)
}
