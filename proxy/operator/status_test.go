package operator_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

type health struct{}

func (health) Endpoint() string { return "https://registry-1.docker.io" }
func (health) Health() (lastOK, lastFail time.Time, failure string) {
	return time.Time{}, time.Now(), "connection refused"
}

// TestStatusWithoutServer: the operator's pages run on the sources they are
// handed, with no proxy.Server behind them.
func TestStatusWithoutServer(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := &operator.Status{
		Report: func(context.Context) ([]cache.ReportEntry, int, error) {
			return []cache.ReportEntry{{Upstream: "docker.io", Repository: "library/redis", Rules: "none"}}, 2, nil
		},
		Nodes: func(context.Context) ([]fleet.NodeStatus, error) {
			return []fleet.NodeStatus{
				{Address: "10.0.0.1", ContainerdVersion: "1.6.8", LastPull: now, State: fleet.StateUses},
				{Address: "10.0.0.2", State: fleet.StateDoesNot},
			}, nil
		},
		Usage:     func() *maintain.Usage { return nil },
		Upstreams: map[string]operator.Upstream{"docker.io": health{}},
		Rules:     ruleset.DefaultPolicy(),
		Started:   now.Add(-time.Hour),
		Now:       func() time.Time { return now },
	}

	rec := httptest.NewRecorder()
	if err := s.Serve(rec, httptest.NewRequest(http.MethodGet, "/status", nil)); err != nil {
		t.Fatal(err)
	}
	if got := rec.Header().Get("Content-Security-Policy"); got != operator.StatusCSP {
		t.Errorf("CSP = %q, want %q", got, operator.StatusCSP)
	}
	if body := rec.Body.String(); !strings.Contains(body, "library/redis") || !strings.Contains(body, "10.0.0.2") {
		t.Errorf("the page shows neither the entry nor the node that does not use the mirror:\n%s", body)
	}

	rec = httptest.NewRecorder()
	if err := s.ServeReport(rec, httptest.NewRequest(http.MethodGet, "/api/v1/rewrites", nil)); err != nil {
		t.Fatal(err)
	}
	var report struct{ Total, Hidden, Page, Pages int }
	if err := json.Unmarshal(rec.Body.Bytes(), &report); err != nil {
		t.Fatal(err)
	}
	if want := (struct{ Total, Hidden, Page, Pages int }{1, 2, 1, 1}); report != want {
		t.Errorf("report = %+v, want %+v", report, want)
	}

	rec = httptest.NewRecorder()
	if err := s.ServeNodes(rec, httptest.NewRequest(http.MethodGet, "/api/v1/nodes", nil)); err != nil {
		t.Fatal(err)
	}
	var nodes struct {
		Nodes               []fleet.NodeStatus
		PullingByContainerd map[string]int
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 2 || nodes.PullingByContainerd["1.6"] != 1 {
		t.Errorf("nodes = %+v", nodes)
	}
}
