package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// freeAddrs are n addresses on 127.0.0.1 that were free a moment ago.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	return addrs
}

// runUntilDone runs regnorm with args and getenv (a data directory of the
// test's own added) until the test ends, and fails it if run then
// returns an error.
func runUntilDone(t *testing.T, args []string, getenv func(string) string) {
	t.Helper()
	args = append(args, "--data-dir", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, getenv, io.Discard, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

func TestPasswordFromEnvironmentOrFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(file, []byte("from-file\n"), 0o600)
	ups, err := buildUpstreams([]UpstreamConfig{
		{Name: "a", URL: "https://a", Username: "u", PasswordFile: file},
		{Name: "b", URL: "https://b", Username: "u", PasswordEnv: "B_PW"},
	}, env(map[string]string{"B_PW": "from-env"}))
	if err != nil {
		t.Fatal(err)
	}
	if ups[0].Credentials.Password != "from-file" || ups[1].Credentials.Password != "from-env" {
		t.Fatal("passwords not loaded")
	}
	if _, err := buildUpstreams([]UpstreamConfig{{Name: "b", URL: "https://b", Username: "u", PasswordEnv: "UNSET"}}, env(nil)); err == nil || !strings.Contains(err.Error(), "passwordEnv") {
		t.Fatalf("empty password env: %v", err)
	}
}

// TestRunServesAndDrains starts the real wiring and stops it as SIGTERM would.
func TestRunServesAndDrains(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", addr, "--data-dir", t.TempDir()}, env(nil), io.Discard, io.Discard)
	}()
	var resp *http.Response
	for i := 0; i < 100; i++ {
		if resp, err = http.Get("http://" + addr + "/v2/"); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v2/: %d", resp.StatusCode)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		r, err := http.Get("http://" + addr + path)
		if err != nil || r.StatusCode != http.StatusOK {
			t.Fatalf("%s: %v %v", path, err, r)
		}
		r.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

// TestShippedConfigsAreValid: the config files the repository ships for
// docker-compose load and validate.
func TestShippedConfigsAreValid(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"--check-config", "--config", "../../deploy/compose/regnorm.yaml"}, env(nil), &out, io.Discard)
	if err != nil || !strings.Contains(out.String(), "configuration is valid") || !strings.Contains(out.String(), "rootDirectory: /var/lib/regnorm") {
		t.Fatalf("compose config: %v\n%s", err, out.String())
	}
}
