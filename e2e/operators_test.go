//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOperatorsView: after containerd pulls a rewritten image through
// regnorm, a real Prometheus scraping regnorm reports the rewrite through
// PromQL, and a real headless Chromium shows it on the status page (the
// screenshot is kept as an artifact).
func TestOperatorsView(t *testing.T) {
	registryURL, _ := startRegistry(t)
	legacy := pushHello(t, registryURL, "library/redis", "2.8.23", legacyConfig)
	proxyURL, _ := startRegnorm(t, registryURL, "")
	promURL := startPrometheus(t, proxyURL)

	node := startContainerd(t, proxyURL)
	if _, err := node.pull(t, "docker.io/library/redis:2.8.23"); err != nil {
		t.Fatalf("pull: %v", err)
	}
	normalized := node.repoDigest(t, "docker.io/library/redis:2.8.23")

	t.Run("prometheus", func(t *testing.T) {
		if got := promQuery(t, promURL, `up{job="regnorm"}`); got != 1 {
			t.Fatalf("up = %v", got)
		}
		if got := promQuery(t, promURL, `sum(regnorm_rewrites_total{kind="config-media-type"})`); got != 1 {
			t.Fatalf("rewrites through PromQL = %v, want 1", got)
		}
		if got := promQuery(t, promURL, `sum(regnorm_normalized_manifests_served_total)`); got < 1 {
			t.Fatalf("normalized manifests served = %v", got)
		}
	})

	t.Run("status page in a browser", func(t *testing.T) {
		dom := chromium(t, "--dump-dom", proxyURL+"/status")
		for _, want := range []string{"docker.io/library/redis", "2.8.23", normalized, legacy.ManifestDigest.String(), "config-media-type"} {
			if !strings.Contains(dom, want) {
				t.Errorf("the rendered page lacks %q", want)
			}
		}
		shot := filepath.Join(artifactsDir(t), "status-page.png")
		chromium(t, "--screenshot="+shot, "--window-size=1400,900", proxyURL+"/status")
		if fi, err := os.Stat(shot); err != nil || fi.Size() < 10_000 {
			t.Fatalf("screenshot %s: %v", shot, err)
		}
		t.Logf("screenshot: %s", shot)
	})
}

// startPrometheus runs Debian's Prometheus with its own config and data
// directory on 127.0.0.1, scraping regnorm every second.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	u, _ := url.Parse(target)
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: regnorm\n  static_configs:\n  - targets: [%q]\n", u.Host)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	start(t, "prometheus", prometheusBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	waitHTTP(t, "http://"+addr+"/-/ready")
	return "http://" + addr
}

// promQuery polls an instant query until it returns a sample (scrapes are
// every second), and returns its value.
func promQuery(t *testing.T, base, query string) float64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
		if err == nil {
			var body struct {
				Status string `json:"status"`
				Data   struct {
					Result []struct {
						Value [2]any `json:"value"`
					} `json:"result"`
				} `json:"data"`
			}
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if body.Status == "success" && len(body.Data.Result) > 0 {
				var v float64
				fmt.Sscan(fmt.Sprint(body.Data.Result[0].Value[1]), &v)
				if v > 0 || time.Now().After(deadline) {
					return v
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus never answered %s", query)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// chromium runs headless Chromium with the flags that keep it off the
// network and returns what it printed.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir()}
	out, err := exec.CommandContext(ctx, chromiumBin, append(base, args...)...).Output()
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return string(out)
}

// artifactsDir is where tests leave files for people to look at:
// $REGNORM_ARTIFACTS, or e2e/artifacts.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("REGNORM_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs("artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
