package operator_test

import (
	"context"
	"encoding/json"
	"fmt"
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
func (health) HeldUntil() time.Time { return time.Time{} }

// held is an upstream whose rate limit holds it.
type held struct {
	health
	until time.Time
}

func (h held) HeldUntil() time.Time { return h.until }

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
				{Address: "10.0.0.2", State: fleet.StateDoesNot,
					NodeConfigFix: &fleet.FixOutlook{Can: fleet.FixCannot, Why: "--fix cannot: <b>legacy</b>"}},
				{Node: "waiting", Address: "10.0.0.3", AddressSharedBy: 2, State: fleet.StateNoPull},
				{Node: "<script>alert(1)</script>", Address: "10.0.0.3", AddressSharedBy: 2, ContainerdVersion: "2.3.4", LastPull: now,
					PullsMatchedBy: fleet.MatchedByHeader, State: fleet.StateUses},
			}, nil
		},
		Usage:     func() *maintain.Usage { return nil },
		Upstreams: map[string]operator.Upstream{"docker.io": health{}, "quay.io": held{until: now.Add(90 * time.Second)}},
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
	body := rec.Body.String()
	if !strings.Contains(body, "library/redis") || !strings.Contains(body, "10.0.0.2") {
		t.Errorf("the page shows neither the entry nor the node that does not use the mirror:\n%s", body)
	}
	// Every node in its state, escaped; the one that has not pulled too.
	for _, want := range []string{
		`does not use the mirror</span>: 1 node</h3>`, `no pull seen yet</span>: 1 node</h3>`, `uses the mirror</span>: 2 nodes</h3>`,
		`<code class="name">waiting</code>`, `<code class="name">&lt;script&gt;alert(1)&lt;/script&gt;</code>`,
		`<span class="fix-cannot">cannot fix it</span><div class="details">--fix cannot: &lt;b&gt;legacy&lt;/b&gt;</div>`,
		"address shared by 2 nodes", "2 nodes share an address with another node",
		`<span class="bad">rate limited until 03:05:35 UTC</span>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(body, "<details>") {
		t.Error("a state with 2 nodes is collapsed")
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
	if len(nodes.Nodes) != 4 || nodes.PullingByContainerd["1.6"] != 1 || nodes.PullingByContainerd["2.3"] != 1 {
		t.Errorf("nodes = %+v", nodes)
	}
}

// TestStatusCollapsesManyNodes: a state with more than 20 nodes is listed
// behind a summary line, at most 1000 of them, with the way to all of them
// (/api/v1/nodes); a state with 20 is listed open.
func TestStatusCollapsesManyNodes(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var nodes []fleet.NodeStatus
	for i := range 1005 {
		nodes = append(nodes, fleet.NodeStatus{Node: fmt.Sprintf("waiting-%04d", i), State: fleet.StateNoPull})
	}
	for i := range 20 {
		nodes = append(nodes, fleet.NodeStatus{Node: fmt.Sprintf("pulling-%02d", i), LastPull: now, State: fleet.StateUses})
	}
	s := &operator.Status{
		Report: func(context.Context) ([]cache.ReportEntry, int, error) { return nil, 0, nil },
		Nodes:  func(context.Context) ([]fleet.NodeStatus, error) { return nodes, nil },
		Usage:  func() *maintain.Usage { return nil },
		Rules:  ruleset.DefaultPolicy(),
		Now:    func() time.Time { return now },
	}
	rec := httptest.NewRecorder()
	if err := s.Serve(rec, httptest.NewRequest(http.MethodGet, "/status", nil)); err != nil {
		t.Fatal(err)
	}
	body := rec.Body.String()
	for _, want := range []string{
		`<details><summary><span class="state-nopull">no pull seen yet</span>: 1005 nodes</summary>`,
		`The first 1000 of 1005; all of them in <a href="/api/v1/nodes">`,
		`<h3><span class="state-uses">uses the mirror</span>: 20 nodes</h3>`,
		`<code class="name">waiting-0999</code>`, `<code class="name">pulling-19</code>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(body, "waiting-1000") || strings.Count(body, "<details>") != 1 {
		t.Errorf("more than 1000 nodes of a state listed, or the 20 collapsed")
	}
}
