package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
)

// TestForgottenNodesReportingAgainTakeAPlace: a node forgotten (not
// reported on for ForgetAfter) does not count against MaxNodes, but its
// record stays until Prune deletes it (every 30 s, one GET and one DELETE
// a node: minutes for thousands on S3). A report of it in that window was
// taken as a known node's, which takes no place: a holder of the report
// token who lets nodes be forgotten, reports new ones in their places and
// then the forgotten ones again keeps more than MaxNodes live records,
// which Prune keeps, and can do it again every ForgetAfter (10005 of 10000
// with all of them forgotten and 5 new). A forgotten node's report must be
// counted as a new node's. Here a bound of 3: 2 nodes live, one forgotten.
func TestForgottenNodesReportingAgainTakeAPlace(t *testing.T) {
	t.Parallel()
	const bound = 3
	f := newTestFleet(t, prometheus.NewRegistry())
	f.maxReported = bound
	ctx := context.Background()
	report := func(node string) cache.NodeReport {
		return cache.NodeReport{Node: node, HostsDir: DefaultHostsDir, ReadsHostsToml: true}
	}
	now := f.clock.Now().UTC()
	for i := range bound - 1 {
		r := report(fmt.Sprintf("node-%d", i))
		r.ReportedAt = now
		if err := f.store.PutNodeReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Reported on just over ForgetAfter ago, not pruned yet.
	old := report("forgotten")
	old.ReportedAt = now.Add(-f.forget - time.Minute)
	if err := f.store.PutNodeReport(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := f.Receive(ctx, report("newcomer")); err != nil {
		t.Fatalf("a new node in the last place: %v", err)
	}
	err := f.Receive(ctx, report("forgotten"))
	f.Prune(ctx)
	f.reports.Forget()
	view, verr := f.View(ctx)
	if verr != nil {
		t.Fatal(verr)
	}
	stored, serr := f.store.ListNodeReports(ctx)
	if serr != nil {
		t.Fatal(serr)
	}
	if len(view) > bound || len(stored) > bound || !errors.Is(err, ErrTooManyNodes) {
		t.Errorf("the forgotten node's report: %v; %d nodes in the fleet view, %d records kept after Prune; want ErrTooManyNodes and at most %d",
			err, len(view), len(stored), bound)
	}
}
