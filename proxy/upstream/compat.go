package upstream

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// What callers used before Repository, while they move to it.

// Do sends a request for repo to the upstream (see do).
func (u *Registry) Do(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	return u.do(ctx, method, repo, path, query, header)
}

// StatusError is statusError.
func (u *Registry) StatusError(resp *http.Response, notFound string) *errcode.Error {
	return u.statusError(resp, notFound)
}

// Drain is drain.
func Drain(resp *http.Response) { drain(resp) }

// GetBlob is Repository.GetBlob for repo.
func (u *Registry) GetBlob(ctx context.Context, repo string, dgst digest.Digest) (*Blob, error) {
	return u.Repository(repo).GetBlob(ctx, dgst)
}

// CheckBlobSize is Repository.CheckBlobSize.
func (u *Registry) CheckBlobSize(size int64) error { return u.checkBlobSize(size) }

// Confirmed is Repository.Confirmed for repo.
func (u *Registry) Confirmed(repo string, now time.Time) bool { return u.confirmed(repo, now) }

// Confirm is Repository.Confirm for repo.
func (u *Registry) Confirm(repo string, now time.Time) { u.confirm(repo, now) }

// Identity tells apart the credentials a view asks with.
func (u *Registry) Identity() [sha256.Size]byte { return u.credsKey }

// MaxDownloads is Repository.MaxDownloads.
func (u *Registry) MaxDownloads() int { return u.share }
