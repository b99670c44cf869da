package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want Size
		text string // how it prints back
	}{
		{"1024", 1024, "1KiB"},
		{"500MB", 500e6, "500MB"},
		{"10GiB", 10 << 30, "10GiB"},
		{"1.5 KiB", 1536, "1536"},
		{"0", 0, "0"},
		{"512B", 512, "512"},
		{"1TB", 1e12, "1TB"},
		{"1000KiB", 1024000, "1000KiB"},
		{" 8GiB ", 8 << 30, "8GiB"},
	} {
		got, err := ParseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			continue
		}
		if got.String() != tt.text {
			t.Errorf("%q prints as %q, want %q", tt.in, got, tt.text)
		}
		if back, err := ParseSize(got.String()); err != nil || back != got {
			t.Errorf("%q does not read back: %d, %v", got, back, err)
		}
	}
	for _, in := range []string{"", "lots", "-3GB", "GiB", "NaN", "Inf", "1e30TB", "10 GiBs"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

// TestSizesReadThemselves: a size reads the same from the file, the
// environment and a flag, and --check-config prints it as written.
func TestSizesReadThemselves(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("spoolMaxSize: 2GiB\nnormalize:\n  maxZstdWindow: 16MiB\nupstreams:\n- {name: a.io, url: https://a.io, maxBlobSize: 500MB}\n"), 0o600)
	cfg, err := loadConfig([]string{"--config", file}, env(map[string]string{"REGNORM_CACHE_MAX_SIZE": "64MiB"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SpoolMaxSize != 2<<30 || cfg.Normalize.MaxZstdWindow != 16<<20 || cfg.Upstreams[0].MaxBlobSize != 500e6 || cfg.Cache.MaxSize != 64<<20 {
		t.Fatalf("sizes: spool %d, window %d, upstream blob %d, cache %d", cfg.SpoolMaxSize, cfg.Normalize.MaxZstdWindow, cfg.Upstreams[0].MaxBlobSize, cfg.Cache.MaxSize)
	}
	if cfg, err = loadConfig([]string{"--config", file, "--cache-max-size", "1.5 GB"}, env(map[string]string{"REGNORM_CACHE_MAX_SIZE": "64MiB"})); err != nil || cfg.Cache.MaxSize != 1.5e9 {
		t.Fatalf("the flag over the environment: %d, %v", cfg.Cache.MaxSize, err)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"spoolMaxSize: 2GiB\n", "maxZstdWindow: 16MiB\n", "maxBlobSize: 500MB\n", "maxSize: 1500MB\n", "maxBlobSize: 16GiB\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the printed configuration lacks %q:\n%s", want, out)
		}
	}
}
