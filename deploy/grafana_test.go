package deploy_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/upstream"
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
// in the first /metrics of a proxy that has served nothing yet, so no panel
// shows "no data" until traffic happens to create a series.
func TestDashboardHasDataFromTheFirstScrape(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	u, _ := url.Parse("http://127.0.0.1:1")
	srv, err := proxy.New(proxy.Options{
		Store:           cache.New(inmemory.New()),
		Upstreams:       []upstream.Config{{Name: "docker.io", URL: u}, {Name: "quay.io", URL: u}},
		DefaultUpstream: "docker.io",
		Metrics:         proxy.NewMetrics(reg),
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for m, panel := range dashboardQueries(t) {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m) + `[{ ]`).Match(body) {
			t.Errorf("panel %q queries %s, which a fresh proxy does not export yet", panel, m)
		}
	}
}
