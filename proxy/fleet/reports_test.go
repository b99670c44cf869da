package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
)

// TestNewNodesAtOnceStayWithinMaxNodes: with one place left under
// MaxNodes, new nodes that report at the same moment get one place
// between them; the others are refused. Each used to read the same
// listing, find the place free and take it.
func TestNewNodesAtOnceStayWithinMaxNodes(t *testing.T) {
	t.Parallel()
	f := newTestFleet(t, prometheus.NewRegistry())
	ctx := context.Background()
	now := f.clock.Now()
	for i := range MaxNodes - 1 {
		if err := f.store.PutNodeReport(ctx, cache.NodeReport{Node: fmt.Sprintf("node-%d", i), HostsDir: DefaultHostsDir, ReportedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.listReports(ctx); err != nil { // the listing every report reads
		t.Fatal(err)
	}
	const newcomers = 16
	errs := make([]error, newcomers)
	var wg sync.WaitGroup
	for i := range newcomers {
		wg.Go(func() {
			errs[i] = f.Receive(ctx, cache.NodeReport{Node: fmt.Sprintf("newcomer-%d", i), HostsDir: DefaultHostsDir, ReadsHostsToml: true})
		})
	}
	wg.Wait()
	taken := 0
	for _, err := range errs {
		switch {
		case err == nil:
			taken++
		case !errors.Is(err, ErrTooManyNodes):
			t.Errorf("a newcomer's report: %v", err)
		}
	}
	all, err := f.store.ListNodeReports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if taken != 1 || len(all) != MaxNodes {
		t.Errorf("%d of %d newcomers taken, %d nodes stored; want 1 and %d", taken, newcomers, len(all), MaxNodes)
	}
}
