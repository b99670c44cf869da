package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/recent"
)

// TestSlowListingHidesAKnownNodesReport: lingers assumed a listing was at
// most recent.TTL old when used, but recent.Listing counts TTL from the END
// of its fetch, and Prune's fetch (Run's context, no timeout) may take as
// long as reading every changed record takes (a sender re-reporting its
// nodes changes every record). A known node k reports at its forget
// boundary; its write (6 s of the 30 s allowed) lands just after Prune's
// listing walked /nodes, so the listing keeps k's old record; reading the
// other records takes a minute. A newcomer right after finds k's old record
// past forget+lingers, does not count it, and takes k's place: 4 live
// records with a bound of 3, on one replica.
func TestSlowListingHidesAKnownNodesReport(t *testing.T) {
	t.Parallel()
	const bound = 3
	clk := &stepClock{now: time.Now()}
	f := newTestFleet(t, prometheus.NewRegistry())
	st := &slowStore{Store: f.store, put: map[string]chan struct{}{"k": make(chan struct{})}, entered: make(chan struct{})}
	f.clock, f.reports, f.maxReported, f.store = clk, recent.New[[]cache.NodeReport](clk.Now), bound, st
	ctx := context.Background()
	report := func(node string) cache.NodeReport {
		return cache.NodeReport{Node: node, HostsDir: DefaultHostsDir, ReadsHostsToml: true}
	}
	start := clk.Now()
	for node, at := range map[string]time.Time{"node-0": start, "node-1": start, "k": start.Add(-f.forget)} {
		r := report(node)
		r.ReportedAt = at.UTC()
		if err := st.Store.PutNodeReport(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	// k reports at its boundary: known (its record is exactly forget old).
	kDone := make(chan error, 1)
	go func() { kDone <- f.Receive(ctx, report("k")) }()
	<-st.entered // k's write is under way

	// The listing in use expires; Prune lists: its walk sees k's old
	// record, k's write lands, then reading the rest takes a minute.
	clk.advance(recent.TTL)
	st.afterWalk = func() {
		close(st.put["k"])
		if err := <-kDone; err != nil {
			t.Errorf("k at its boundary: %v", err)
		}
		clk.advance(time.Minute)
	}
	f.Prune(ctx)
	st.afterWalk = nil

	err := f.Receive(ctx, report("newcomer"))
	all, lerr := st.Store.ListNodeReports(ctx)
	if lerr != nil {
		t.Fatal(lerr)
	}
	live := 0
	for _, r := range all {
		if clk.Now().Sub(r.ReportedAt) <= f.forget {
			live++
		}
	}
	if err == nil || live > bound {
		t.Fatalf("newcomer: %v; %d records live (within forget), bound %d", err, live, bound)
	}
}

// TestNewcomerWhoseWriteFailedLateDropsTheListing: a new node's write that
// reports an error may still have landed (an S3 PUT whose context ended
// after the object was committed). Receive used to return without Forget:
// the slot let go, the next newcomer counted against the listing that
// does not have the first, one over the bound.
func TestNewcomerWhoseWriteFailedLateDropsTheListing(t *testing.T) {
	t.Parallel()
	const bound = 3
	f := newTestFleet(t, prometheus.NewRegistry())
	st := &slowStore{Store: f.store, failAfterWrite: map[string]bool{"n1": true}}
	f.store, f.maxReported = st, bound
	ctx := context.Background()
	now := f.clock.Now().UTC()
	for i := range bound - 1 {
		if err := st.Store.PutNodeReport(ctx, cache.NodeReport{Node: fmt.Sprintf("node-%d", i), HostsDir: DefaultHostsDir, ReportedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Receive(ctx, cache.NodeReport{Node: "n1", HostsDir: DefaultHostsDir}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("n1: %v, want its write's error", err)
	}
	err := f.Receive(ctx, cache.NodeReport{Node: "n2", HostsDir: DefaultHostsDir})
	all, lerr := st.Store.ListNodeReports(ctx)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if err == nil || len(all) > bound {
		t.Fatalf("n2: %v; %d records stored, bound %d", err, len(all), bound)
	}
}

// slowStore lets a test step in between a listing's walk and its end, hold
// a node's write, or have a write land and still fail.
type slowStore struct {
	Store
	afterWalk      func()
	put            map[string]chan struct{}
	entered        chan struct{}
	failAfterWrite map[string]bool
}

func (s *slowStore) ListNodeReports(ctx context.Context) ([]cache.NodeReport, error) {
	out, err := s.Store.ListNodeReports(ctx)
	if err == nil && s.afterWalk != nil {
		s.afterWalk()
	}
	return out, err
}

func (s *slowStore) PutNodeReport(ctx context.Context, r cache.NodeReport) error {
	if c, ok := s.put[r.Node]; ok {
		s.entered <- struct{}{}
		<-c
	}
	if err := s.Store.PutNodeReport(ctx, r); err != nil {
		return err
	}
	if s.failAfterWrite[r.Node] {
		return context.DeadlineExceeded
	}
	return nil
}
