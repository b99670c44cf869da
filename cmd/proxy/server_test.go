package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestServerTimeouts: the server run starts bounds headers, whole requests
// and idle connections, as configured, and never answers (no WriteTimeout).
func TestServerTimeouts(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "regnorm.yaml")
	os.WriteFile(file, []byte("readTimeout: 30s\nidleTimeout: 5m\n"), 0o600)
	for _, tt := range []struct {
		name              string
		args              []string
		wantRead, wantIdl time.Duration
	}{
		{"defaults", nil, time.Minute, 2 * time.Minute},
		{"configured", []string{"--config", file}, 30 * time.Second, 5 * time.Minute},
	} {
		cfg, err := loadConfig(tt.args, env(nil))
		if err != nil {
			t.Fatal(err)
		}
		s := newHTTPServer(cfg, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
		if s.ReadHeaderTimeout != 10*time.Second || s.ReadTimeout != tt.wantRead || s.IdleTimeout != tt.wantIdl || s.WriteTimeout != 0 {
			t.Errorf("%s: header %s, read %s, idle %s, write %s; want 10s, %s, %s, none", tt.name,
				s.ReadHeaderTimeout, s.ReadTimeout, s.IdleTimeout, s.WriteTimeout, tt.wantRead, tt.wantIdl)
		}
	}
	for _, yaml := range []string{"readTimeout: 0s\n", "idleTimeout: -1s\n"} {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(bad, []byte(yaml), 0o600)
		field, _, _ := strings.Cut(yaml, ":")
		if _, err := loadConfig([]string{"--config", bad}, env(nil)); err == nil || !strings.Contains(err.Error(), "config: "+field+": must be positive") {
			t.Errorf("%q: %v", yaml, err)
		}
	}
}

// TestServerLetsNoClientHoldAConnection: with short timeouts, the server
// regnorm runs closes a keep-alive connection left idle, answers a warm
// whose body stops coming 408 (an OCI error) and closes the connection,
// and still finishes a warm and sends an answer that take longer than both
// timeouts.
// Only liveness is timed: each wait fails the test after 30 s, far beyond
// the timeouts.
func TestServerLetsNoClientHoldAConnection(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	cfg.ReadTimeout, cfg.IdleTimeout = 200*time.Millisecond, 100*time.Millisecond
	// An upstream slower than both timeouts, that has nothing.
	slowUpstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(3 * cfg.ReadTimeout)
		http.NotFound(w, r)
	}))
	t.Cleanup(slowUpstream.Close)
	u, _ := url.Parse(slowUpstream.URL)
	mirror, err := wire(cfg, cache.New(inmemory.New()), []upstream.Config{{Name: "docker.io", URL: u}}, nil, nil, nil, &attest.Maker{},
		proxy.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", mirror.server.Handler(nil))
	// An answer sent slowly, as a large blob to a slow client is.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		for range 4 {
			io.WriteString(w, "chunk\n")
			w.(http.Flusher).Flush()
			time.Sleep(cfg.ReadTimeout)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := newHTTPServer(cfg, mux, slog.New(slog.DiscardHandler))
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	dial := func(t *testing.T, request string) (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		return c, bufio.NewReader(c)
	}
	closed := func(t *testing.T, br *bufio.Reader) {
		t.Helper()
		_, err := br.ReadByte()
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the connection stayed open: %v", err)
		}
	}

	t.Run("idle keep-alive connection", func(t *testing.T) {
		t.Parallel()
		_, br := dial(t, "GET /healthz HTTP/1.1\r\nHost: regnorm\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("/healthz: %d, close %v; want 200 on a connection kept alive", resp.StatusCode, resp.Close)
		}
		closed(t, br)
	})
	t.Run("body that stops coming", func(t *testing.T) {
		t.Parallel()
		_, br := dial(t, "POST /api/v1/warm HTTP/1.1\r\nHost: regnorm\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"images\":")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Errors []struct{ Code string } }
		json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != http.StatusRequestTimeout || len(body.Errors) != 1 || body.Errors[0].Code != "UNSUPPORTED" {
			t.Fatalf("got %d %+v, want 408 with an OCI error", resp.StatusCode, body)
		}
		closed(t, br)
	})
	t.Run("warm longer than the timeouts", func(t *testing.T) {
		t.Parallel()
		body := `{"images":["library/app:v1"]}`
		_, br := dial(t, "POST /api/v1/warm HTTP/1.1\r\nHost: regnorm\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Results []proxy.WarmResult }
		json.NewDecoder(resp.Body).Decode(&got)
		// Cut short, the warm would fail on its cancelled context instead.
		if resp.StatusCode != http.StatusOK || len(got.Results) != 1 || !strings.HasPrefix(got.Results[0].Error, "MANIFEST_UNKNOWN") {
			t.Fatalf("got %d %+v, want the upstream's 404 as MANIFEST_UNKNOWN", resp.StatusCode, got)
		}
	})
	t.Run("answer longer than the timeouts", func(t *testing.T) {
		t.Parallel()
		_, br := dial(t, "GET /slow HTTP/1.1\r\nHost: regnorm\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != strings.Repeat("chunk\n", 4) {
			t.Fatalf("the answer was cut: %q, %v", b, err)
		}
	})
}
