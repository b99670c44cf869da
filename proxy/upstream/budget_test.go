package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// TestBudget: every request sent spends from the budget of the context it
// is sent with, retries included; past it nothing is sent and the caller
// gets a 503 whose cause is ErrBudgetSpent, which is not retried.
func TestBudget(t *testing.T) {
	t.Parallel()
	var sent atomic.Int32
	r := newRegistry(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		sent.Add(1)
		http.Error(w, "down", http.StatusInternalServerError) // retried
	}), upstream.Config{})
	ctx := upstream.WithBudget(context.Background(), 5)

	// Three attempts: 3 of 5 spent.
	resp, err := r.Do(ctx, http.MethodGet, "app", "/v2/app/manifests/latest", nil, nil)
	if err != nil || resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("first request: %v, %v", resp, err)
	}
	upstream.Drain(resp)
	// Two more attempts, then the budget is spent.
	_, err = r.Do(ctx, http.MethodGet, "app", "/v2/app/manifests/latest", nil, nil)
	if errcode.StatusOf(err) != http.StatusServiceUnavailable || !errors.Is(err, upstream.ErrBudgetSpent) {
		t.Fatalf("past the budget: %v, want 503 with ErrBudgetSpent", err)
	}
	if n := sent.Load(); n != 5 {
		t.Fatalf("%d requests sent, want the budget's 5", n)
	}
	// No budget, no limit.
	if err := upstream.Spend(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestBudgetShares: a share spends from its own budget and from the one it
// is in: no share spends more than its own, and all of them together no
// more than the budget they share.
func TestBudgetShares(t *testing.T) {
	t.Parallel()
	whole := upstream.WithBudget(context.Background(), 5)
	a, b := upstream.WithShare(whole, 3), upstream.WithShare(whole, 3)
	spend := func(ctx context.Context, n int) (ok int) {
		for range n {
			if err := upstream.Spend(ctx); err != nil {
				if !errors.Is(err, upstream.ErrBudgetSpent) {
					t.Fatal(err)
				}
				return ok
			}
			ok++
		}
		return ok
	}
	if got := spend(a, 4); got != 3 {
		t.Errorf("a share of 3 spent %d", got)
	}
	if got := spend(b, 3); got != 2 {
		t.Errorf("the second share spent %d, want what was left of the whole: 2", got)
	}
	if got := spend(upstream.WithShare(context.Background(), 2), 3); got != 2 {
		t.Errorf("a share of no budget spent %d, want its own 2", got)
	}
}
