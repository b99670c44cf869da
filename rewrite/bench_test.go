package rewrite

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// benchMB reads a size in MB from the environment, for short CI runs.
func benchMB(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// writeRealisticLayer writes a layer of about size uncompressed bytes, shaped
// like a distribution base layer: many small text files (configs, scripts),
// fewer large binaries (partly incompressible), directories, symlinks (some
// carrying a user.* xattr, the case the rule strips) and whiteouts. Seeded:
// the same size gives the same layer.
func writeRealisticLayer(w io.Writer, size int64) error {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"lib", "usr", "share", "config", "enable", "true", "false", "path", "value", "default",
		"server", "client", "version", "name", "# comment", "export", "local", "return", "if", "then", "fi"}
	tw := tar.NewWriter(w)
	epoch := time.Unix(1700000000, 0)
	var written int64
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			b.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(8) == 0 {
				b.WriteByte('\n')
			} else {
				b.WriteByte(' ')
			}
		}
		return b.Bytes()[:n]
	}
	binary := func(n int) []byte {
		b := make([]byte, n)
		for i := 0; i < n; i += 4096 {
			end := min(i+4096, n)
			if rng.IntN(3) == 0 { // a third incompressible, the rest repetitive code-like bytes
				for j := i; j < end; j++ {
					b[j] = byte(rng.Uint32())
				}
			} else {
				copy(b[i:end], text(end-i))
			}
		}
		return b
	}
	for dir := 0; written < size; dir++ {
		d := fmt.Sprintf("usr/lib/pkg%04d/", dir)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
		for f := 0; f < 40 && written < size; f++ {
			var body []byte
			if rng.IntN(20) == 0 {
				body = binary(256<<10 + rng.IntN(4<<20))
			} else {
				body = text(200 + rng.IntN(16<<10))
			}
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sfile%03d", d, f), Mode: 0o644, Size: int64(len(body)), ModTime: epoch}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if _, err := tw.Write(body); err != nil {
				return err
			}
			written += int64(len(body)) + 512
		}
		link := &tar.Header{Typeflag: tar.TypeSymlink, Name: d + "current", Linkname: "file000", ModTime: epoch}
		if dir%10 == 0 {
			link.PAXRecords = map[string]string{"SCHILY.xattr.user.rpm": "origin"}
		}
		if err := tw.WriteHeader(link); err != nil {
			return err
		}
		if dir%25 == 0 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: d + ".wh.removed", ModTime: epoch}); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// BenchmarkLayerRules compares, in one run, on the same generated layer
// (300 MB uncompressed, or REGNORM_BENCH_LAYER_MB):
//
//	scan       vs plain gzip decompression of the layer     (goal: ratio >= 0.8)
//	repackage  vs plain gzip compression of the same tar    (goal: ratio >= 0.8)
//
// at the same gzip settings. Throughputs are uncompressed MB per second.
//
//	go test ./rewrite -run '^$' -bench LayerRules -benchtime 3x
func BenchmarkLayerRules(b *testing.B) {
	size := int64(benchMB("REGNORM_BENCH_LAYER_MB", 300)) << 20
	var raw bytes.Buffer
	if err := writeRealisticLayer(&raw, size); err != nil {
		b.Fatal(err)
	}
	var gz bytes.Buffer
	if err := gzipTo(&gz, raw.Bytes()); err != nil {
		b.Fatal(err)
	}
	mb := float64(raw.Len()) / 1e6

	var decompress, scan, compress, repack time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		decompress += timeIt(b, func() error {
			zr, err := gzip.NewReader(bytes.NewReader(gz.Bytes()))
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, zr)
			return err
		})
		scan += timeIt(b, func() error {
			s, err := ScanLayer(bytes.NewReader(gz.Bytes()), Limits{})
			if err == nil && s.Clean() {
				err = fmt.Errorf("the generated layer has nothing to strip")
			}
			return err
		})
		compress += timeIt(b, func() error { return gzipTo(io.Discard, raw.Bytes()) })
		repack += timeIt(b, func() error {
			_, err := RepackLayer(io.Discard, bytes.NewReader(gz.Bytes()), Limits{})
			return err
		})
	}
	n := float64(b.N)
	b.ReportMetric(mb*n/decompress.Seconds(), "decompress_MB/s")
	b.ReportMetric(mb*n/scan.Seconds(), "scan_MB/s")
	b.ReportMetric(decompress.Seconds()/scan.Seconds(), "scan_ratio")
	b.ReportMetric(mb*n/compress.Seconds(), "compress_MB/s")
	b.ReportMetric(mb*n/repack.Seconds(), "repack_MB/s")
	b.ReportMetric(compress.Seconds()/repack.Seconds(), "repack_ratio")
}

// BenchmarkZstdToGzip compares, in one run, on the same generated layer
// (300 MB uncompressed, or REGNORM_BENCH_LAYER_MB), the zstd → gzip rule's
// recompression of its zstd form against plain gzip compression of the
// same tar, at the same gzip settings, alternately. Throughputs are
// uncompressed MB per second; ratio 1 would mean decompressing zstd cost
// nothing.
//
//	go test ./rewrite -run '^$' -bench ZstdToGzip -benchtime 3x
func BenchmarkZstdToGzip(b *testing.B) {
	size := int64(benchMB("REGNORM_BENCH_LAYER_MB", 300)) << 20
	var raw bytes.Buffer
	if err := writeRealisticLayer(&raw, size); err != nil {
		b.Fatal(err)
	}
	var zst bytes.Buffer
	zw, err := newCompressor(&zst, Zstd)
	if err != nil {
		b.Fatal(err)
	}
	zw.Write(raw.Bytes())
	zw.Close()
	mb := float64(raw.Len()) / 1e6
	var compress, recompress time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		compress += timeIt(b, func() error { return gzipTo(io.Discard, raw.Bytes()) })
		recompress += timeIt(b, func() error {
			_, err := TransformLayer(io.Discard, bytes.NewReader(zst.Bytes()), Limits{}, LayerTransform{To: Gzip})
			return err
		})
	}
	n := float64(b.N)
	b.ReportMetric(mb*n/compress.Seconds(), "gzip_MB/s")
	b.ReportMetric(mb*n/recompress.Seconds(), "zstd_to_gzip_MB/s")
	b.ReportMetric(compress.Seconds()/recompress.Seconds(), "ratio")
}

// BenchmarkRepackMemory repackages a 1 GB layer (or REGNORM_BENCH_MEMORY_MB)
// generated and compressed on the fly, never held in memory, and reports the
// peak Go heap in use while it runs (goal: under 200 MB).
//
//	go test ./rewrite -run '^$' -bench RepackMemory -benchtime 1x
func BenchmarkRepackMemory(b *testing.B) {
	size := int64(benchMB("REGNORM_BENCH_MEMORY_MB", 1024)) << 20
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var peak atomic.Uint64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		pr, pw := io.Pipe()
		go func() {
			zw, _ := gzip.NewWriterLevel(pw, gzipLevel)
			err := writeRealisticLayer(zw, size)
			if err == nil {
				err = zw.Close()
			}
			pw.CloseWithError(err)
		}()
		res, err := RepackLayer(io.Discard, pr, Limits{})
		close(stop)
		<-sampled
		if err != nil {
			b.Fatal(err)
		}
		if res.Clean() {
			b.Fatal("nothing was stripped")
		}
		b.ReportMetric(float64(peak.Load())/(1<<20), "peak_heap_MB")
		b.ReportMetric(float64(size)/(1<<20), "layer_MB")
	}
}

// timeIt runs f, failing the benchmark on its error, and says how long it
// took.
func timeIt(b *testing.B, f func() error) time.Duration {
	start := time.Now()
	if err := f(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// gzipTo compresses raw into w at the repackaging's gzip settings: the
// baseline the layer rules are measured against.
func gzipTo(w io.Writer, raw []byte) error {
	zw, err := gzip.NewWriterLevel(w, gzipLevel)
	if err != nil {
		return err
	}
	if _, err := zw.Write(raw); err != nil {
		return err
	}
	return zw.Close()
}
