package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

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

func TestDashboardQueriesUseRealMetrics(t *testing.T) {
	t.Parallel()
	names := registered(t)
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
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, m := range metric.FindAllString(target.Expr, -1) {
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed := strings.TrimSuffix(m, suffix); trimmed != m && names[trimmed] {
						base = trimmed
					}
				}
				if !names[base] {
					t.Errorf("panel %q queries %s, which the proxy does not export", p.Title, m)
				}
				used[base] = true
			}
		}
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
