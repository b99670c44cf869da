package upstream

import (
	"context"
	"net/http"
	"net/url"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// Do is do, for the tests of what every request goes through (auth,
// retries, the budget) with a path of their own.
func (u *Registry) Do(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	return u.do(ctx, method, repo, path, query, header)
}

// StatusError is statusError.
func (u *Registry) StatusError(resp *http.Response, notFound string) *errcode.Error {
	return u.statusError(resp, notFound)
}

// Drain is drain.
func Drain(resp *http.Response) { drain(resp) }
