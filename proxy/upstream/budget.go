package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// ErrBudgetSpent is the cause of the error a request gets once it has sent
// as many upstream requests as its budget allows.
var ErrBudgetSpent = errors.New("upstream request budget spent")

type budgetKey struct{}

type budget struct {
	limit  int64
	spent  atomic.Int64
	within *budget // the budget this one is a share of, if any
}

// WithBudget returns ctx with a budget of n upstream requests: each request
// Do sends with ctx, or with a context made from it, spends one (retries and
// the second try after a 401 included), and so does each Spend. Work shared
// single-flight and detached from the caller's cancellation (a normalization,
// a manifest fetch) keeps ctx's values, so it spends from the budget of the
// request that started it.
func WithBudget(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, budgetKey{}, &budget{limit: int64(n)})
}

// WithShare returns ctx with a budget of n upstream requests within ctx's
// own (warm's images, within the warm request): each request spends from
// both, so the share never causes more than n, and all shares together
// never more than the budget they are in. Without a budget in ctx it is
// WithBudget.
func WithShare(ctx context.Context, n int) context.Context {
	within, _ := ctx.Value(budgetKey{}).(*budget)
	return context.WithValue(ctx, budgetKey{}, &budget{limit: int64(n), within: within})
}

// Left is how many upstream requests ctx's budget, and every budget it
// is a share of, still allows; -1 when ctx has none.
func Left(ctx context.Context) int {
	left := int64(-1)
	for b, _ := ctx.Value(budgetKey{}).(*budget); b != nil; b = b.within {
		if n := max(b.limit-b.spent.Load(), 0); left < 0 || n < left {
			left = n
		}
	}
	return int(left)
}

// Spend takes one upstream request from ctx's budget (nothing when ctx has
// none), and from every budget it is a share of. Past one of them it is a
// 503 the client can act on: what was fetched so far is cached, so a retry
// goes on from there.
func Spend(ctx context.Context) error {
	b, _ := ctx.Value(budgetKey{}).(*budget)
	for ; b != nil; b = b.within {
		if b.spent.Add(1) > b.limit {
			return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable,
				fmt.Sprintf("this request needs more than %d upstream requests; what was fetched is kept, so a retry goes on from there", b.limit),
				ErrBudgetSpent)
		}
	}
	return nil
}
