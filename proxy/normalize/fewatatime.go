package normalize

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// fewAtATime calls read for each item, at most limit at once, and stops at
// the first error, which it returns: no read starts once one has failed, or
// once ctx has ended. Cancelling the reads under way is not enough: what a
// read joins (a manifest fetch, a layer scan) is single-flight work shared
// with other callers, which goes on without them. So the reads of an index
// whose first child upstream does not have cost a few requests, not one per
// child.
func fewAtATime[T any](ctx context.Context, limit int, items []T, read func(ctx context.Context, item T) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	stopped := false
	for _, item := range items {
		// A read that failed cancels gctx before its slot frees, so the
		// read waiting for that slot sees it.
		if gctx.Err() != nil {
			stopped = true
			break
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			return read(gctx, item)
		})
	}
	if err := g.Wait(); err != nil || !stopped {
		return err
	}
	return ctx.Err() // ended before every read ran
}
