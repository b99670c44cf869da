package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/recent"
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
	// Reported on past ForgetAfter and lingers (it no longer counts against
	// the bound), not pruned yet.
	old := report("forgotten")
	old.ReportedAt = now.Add(-f.forget - lingers - time.Minute)
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

// TestNodeReportingAtItsForgetBoundaryKeepsItsPlace: a node whose record
// is just at the forget period reports again (an unchanged state: the
// listing in use is kept, its old record in it); a newcomer a second later
// must still count it. Before lingers, the newcomer found it forgotten and
// took its place: one over the bound, on one replica, with no race.
func TestNodeReportingAtItsForgetBoundaryKeepsItsPlace(t *testing.T) {
	t.Parallel()
	const bound = 3
	clk := &stepClock{now: time.Now()}
	f := newTestFleet(t, prometheus.NewRegistry())
	f.clock, f.reports, f.maxReported = clk, recent.New[[]cache.NodeReport](clk.Now), bound
	ctx := context.Background()
	report := func(node string) cache.NodeReport {
		return cache.NodeReport{Node: node, HostsDir: DefaultHostsDir, ReadsHostsToml: true}
	}
	for i, age := range []time.Duration{0, 0, f.forget} {
		r := report(fmt.Sprintf("node-%d", i))
		r.ReportedAt = clk.Now().Add(-age).UTC()
		if err := f.store.PutNodeReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Receive(ctx, report("node-2")); err != nil {
		t.Fatalf("node-2 at its boundary: %v", err)
	}
	clk.advance(time.Second)
	if err := f.Receive(ctx, report("newcomer")); !errors.Is(err, ErrTooManyNodes) {
		t.Fatalf("a newcomer with every place taken: %v, want ErrTooManyNodes", err)
	}
}

// TestForgottenNodeReportingAgainWithRoom: a forgotten node takes a place
// again when there is one; its own old record does not count against it,
// whether it still lingers or not.
func TestForgottenNodeReportingAgainWithRoom(t *testing.T) {
	t.Parallel()
	for _, age := range []time.Duration{DefaultForgetAfter + lingers/2, DefaultForgetAfter + 2*lingers} {
		f := newTestFleet(t, prometheus.NewRegistry())
		f.maxReported = 2
		ctx := context.Background()
		now := f.clock.Now().UTC()
		for node, at := range map[string]time.Time{"live": now, "forgotten": now.Add(-age)} {
			if err := f.store.PutNodeReport(ctx, cache.NodeReport{Node: node, HostsDir: DefaultHostsDir, ReportedAt: at}); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Receive(ctx, cache.NodeReport{Node: "forgotten", HostsDir: DefaultHostsDir, ReadsHostsToml: true}); err != nil {
			t.Errorf("a forgotten node (%s ago) reporting again with a place free: %v", age, err)
		}
	}
}

// TestNewcomerWaitingForTheSlotLeavesWithItsClient: a new node's report
// waiting for another's to be recorded ends when its request does.
func TestNewcomerWaitingForTheSlotLeavesWithItsClient(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	f.newcomers <- struct{}{} // another newcomer is being recorded
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Receive(ctx, cache.NodeReport{Node: "newcomer", HostsDir: DefaultHostsDir, ReadsHostsToml: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("a newcomer whose client left: %v, want context.Canceled", err)
	}
}

// stepClock is a clock the test moves.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
