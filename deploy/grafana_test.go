package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/proxy"
)

const dashboardPath = "grafana/regnorm-dashboard.json"

// registered returns the names of every metric the proxy registers, read from
// the collectors' descriptors (a vector with no children yet does not show
// in /metrics, but is still a metric the dashboard may query).
func registered(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{}
	proxy.NewMetrics(rec)
	names := map[string]bool{}
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, c := range rec.collectors {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fq.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = true
			}
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metrics found", len(names))
	}
	return names
}

type recorder struct{ collectors []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return nil
}
func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
}
func (r *recorder) Unregister(prometheus.Collector) bool { return false }

// dashboardQueries maps every regnorm metric the dashboard queries (with a
// histogram's _bucket, _sum or _count suffix, if any) to a panel that uses it.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	metric := regexp.MustCompile(`regnorm_[a-z0-9_]+`)
	queries := map[string]string{}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, m := range metric.FindAllString(target.Expr, -1) {
				queries[m] = p.Title
			}
		}
	}
	if len(queries) < 10 {
		t.Fatalf("only %d metrics found in the dashboard's queries", len(queries))
	}
	return queries
}

func TestDashboardQueriesUseRealMetrics(t *testing.T) {
	t.Parallel()
	names := registered(t)
	used := map[string]bool{}
	for m, panel := range dashboardQueries(t) {
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if trimmed := strings.TrimSuffix(m, suffix); trimmed != m && names[trimmed] {
				base = trimmed
			}
		}
		if !names[base] {
			t.Errorf("panel %q queries %s, which the proxy does not export", panel, m)
		}
		used[base] = true
	}
	for _, want := range []string{"regnorm_rewrites_total", "regnorm_unnormalized_digest_pulls_total", "regnorm_cache_size_bytes",
		"regnorm_normalization_duration_seconds", "regnorm_upstream_requests_total", "regnorm_cache_requests_total"} {
		if !used[want] {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

// TestDashboardMatchesGrafanaSchema runs check/check.mjs: TypeScript checks
// the dashboard against @grafana/schema (installed by scripts/test-deps.sh,
// which sets REGNORM_NPM_MODULES).
func TestDashboardMatchesGrafanaSchema(t *testing.T) {
	t.Parallel()
	modules := os.Getenv("REGNORM_NPM_MODULES")
	if modules == "" {
		t.Fatal("REGNORM_NPM_MODULES is not set: run scripts/test.sh, which installs @grafana/schema and typescript")
	}
	out, err := exec.Command("node", filepath.Join("grafana", "check", "check.mjs"), dashboardPath, modules).CombinedOutput()
	if err != nil {
		t.Fatalf("dashboard does not match @grafana/schema: %v\n%s", err, out)
	}
	if !slices.Contains(strings.Fields(string(out)), "@grafana/schema") {
		t.Fatalf("unexpected checker output: %s", out)
	}
}

// TestDashboardHasDataFromTheFirstScrape: every metric a panel queries is
// in the first /metrics of a regnorm that has served nothing yet (the
// binary, as cmd/proxy wires it), so no panel shows "no data" until traffic
// happens to create a series.
func TestDashboardHasDataFromTheFirstScrape(t *testing.T) {
	t.Parallel()
	bin := buildRegnorm(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// Two upstreams, never contacted: nothing is pulled.
	config := fmt.Sprintf(`listen: %q
cache:
  filesystem:
    rootDirectory: %q
spoolDir: %q
defaultUpstream: docker.io
upstreams:
  - name: docker.io
    url: http://127.0.0.1:1
  - name: quay.io
    url: http://127.0.0.1:1
`, addr, filepath.Join(dir, "cache"), dir)
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.yaml"))
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var body []byte
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				break
			}
		}
		if i == 300 {
			t.Fatalf("regnorm did not serve /metrics: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for m, panel := range dashboardQueries(t) {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m) + `[{ ]`).Match(body) {
			t.Errorf("panel %q queries %s, which a fresh regnorm does not export yet", panel, m)
		}
	}
}
