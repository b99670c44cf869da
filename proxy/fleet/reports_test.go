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
)

// TestNewNodesAtOnceStayWithinMaxNodes: with one place left under the
// bound, new nodes that report at the same moment get one place between
// them; the others are refused. Each used to read the same listing, find
// the place free and take it. A bound of 3, so that many rounds are cheap,
// and a store that lets the others run before it records a report, as a
// store across a network does.
func TestNewNodesAtOnceStayWithinMaxNodes(t *testing.T) {
	t.Parallel()
	const bound, newcomers, rounds = 3, 8, 20
	ctx := context.Background()
	for round := range rounds {
		f := newTestFleet(t, prometheus.NewRegistry())
		f.maxReported = bound
		f.store = yieldingStore{f.store}
		now := f.clock.Now()
		for i := range bound - 1 {
			if err := f.store.PutNodeReport(ctx, cache.NodeReport{Node: fmt.Sprintf("node-%d", i), HostsDir: DefaultHostsDir, ReportedAt: now}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.listReports(ctx); err != nil { // the listing every report reads
			t.Fatal(err)
		}
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
				t.Fatalf("round %d: a newcomer's report: %v", round, err)
			}
		}
		all, err := f.store.ListNodeReports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if taken != 1 || len(all) != bound {
			t.Fatalf("round %d: %d of %d newcomers taken, %d nodes stored; want 1 and %d", round, taken, newcomers, len(all), bound)
		}
	}
}

// yieldingStore takes a moment to record a report.
type yieldingStore struct{ Store }

func (s yieldingStore) PutNodeReport(ctx context.Context, r cache.NodeReport) error {
	time.Sleep(time.Millisecond)
	return s.Store.PutNodeReport(ctx, r)
}
