package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNodeConfigWritesAndRemovesItsOwnFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// An operator's own hosts.toml for quay.io must survive.
	os.MkdirAll(filepath.Join(dir, "quay.io"), 0o755)
	os.WriteFile(filepath.Join(dir, "quay.io", "hosts.toml"), []byte("server = \"https://quay.io\"\n"), 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"node-config", "--config-path", dir, "--mirror", "http://10.96.0.50:5000",
			"docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"}, func(string) string { return "" }, io.Discard, io.Discard)
	}()
	path := filepath.Join(dir, "docker.io", "hosts.toml")
	var got []byte
	for i := 0; i < 200 && len(got) == 0; i++ {
		got, _ = os.ReadFile(path)
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{`server = "https://registry-1.docker.io"`, `[host."http://10.96.0.50:5000"]`, `capabilities = ["pull", "resolve"]`} {
		if !strings.Contains(string(got), want) {
			t.Fatalf("hosts.toml lacks %s:\n%s", want, got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io")); !os.IsNotExist(err) {
		t.Fatalf("docker.io config not removed: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "quay.io", "hosts.toml")); string(b) != "server = \"https://quay.io\"\n" {
		t.Fatalf("the operator's quay.io file was touched: %q", b)
	}
}

func TestNodeConfigRejectsBadArguments(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"node-config", "--mirror", "ftp://x", "docker.io=https://a"},
		{"node-config", "--mirror", "http://x:5000", "../etc=https://a"},
		{"node-config", "--mirror", "http://x:5000"},
	} {
		if err := run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
