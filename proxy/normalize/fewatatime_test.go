package normalize

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// TestFewAtATime: at most limit reads at once; none starts after one
// failed, or once the context has ended; every read runs otherwise.
func TestFewAtATime(t *testing.T) {
	t.Parallel()
	items := make([]int, 1000)
	for i := range items {
		items[i] = i
	}
	errFirst := errors.New("first child missing")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name      string
		ctx       context.Context
		failAt    int // -1: none
		wantErr   error
		wantCalls func(calls int) bool
	}{
		{"all succeed", context.Background(), -1, nil, func(n int) bool { return n == len(items) }},
		{"first fails", context.Background(), 0, errFirst, func(n int) bool { return n >= 1 && n <= 4 }},
		{"one in the middle fails", context.Background(), 500, errFirst, func(n int) bool { return n <= 504 }},
		{"context ended", cancelled, -1, context.Canceled, func(n int) bool { return n == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			calls, running, most := 0, 0, 0
			err := fewAtATime(tt.ctx, 4, items, func(ctx context.Context, i int) error {
				mu.Lock()
				calls++
				running++
				most = max(most, running)
				mu.Unlock()
				defer func() { mu.Lock(); running--; mu.Unlock() }()
				switch {
				case i == tt.failAt:
					return errFirst
				case tt.failAt >= 0 && i > tt.failAt:
					// Started beside or after the failing read: it ends
					// only when the failure is known, so none frees a turn
					// for another read before then.
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if !tt.wantCalls(calls) || most > 4 {
				t.Fatalf("%d reads, at most %d at once", calls, most)
			}
		})
	}
}
