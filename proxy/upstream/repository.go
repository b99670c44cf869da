package upstream

import (
	"fmt"
	"time"
)

// Repository is one repository of an upstream, asked as one client: the
// handle every read of the upstream goes through. It builds the registry
// API's paths, sends the requests through its Registry (auth, retries, the
// stall guard, the budget) and hands back what the upstream said, verified
// where the protocol allows it, or the *errcode.Error a client would get.
// It is cheap: make one per request.
type Repository struct {
	reg  *Registry
	name string
}

// Repository is name on u, asked with u's credentials (a view made by As
// asks with its client's).
func (u *Registry) Repository(name string) *Repository {
	return &Repository{reg: u, name: name}
}

// Name is the repository's name, e.g. library/redis.
func (r *Repository) Name() string { return r.name }

// Upstream is the upstream's name, as containerd sends it in ns.
func (r *Repository) Upstream() string { return r.reg.name }

// Fingerprint is the upstream's (Registry.Fingerprint).
func (r *Repository) Fingerprint() string { return r.reg.Fingerprint() }

// Forwards reports whether the repository is read with its client's own
// credentials (see Registry.Forwards).
func (r *Repository) Forwards() bool { return r.reg.Forwards() }

// Identity tells apart who asks what: the upstream, the repository and,
// with forwarded credentials, the client's. Two handles with the same
// Identity get the same answers, so work done for one stands for the
// other, and only for it.
func (r *Repository) Identity() string {
	return fmt.Sprintf("%s/%s %x", r.reg.name, r.name, r.reg.credsKey)
}

// MaxDownloads is how many of the fetcher's downloads the repository's
// upstream may hold at once; 0 leaves it to the fetcher.
func (r *Repository) MaxDownloads() int { return r.reg.share }

// Confirmed reports whether the upstream said yes to these credentials for
// the repository within confirmTTL. Without forwarding, every client reads
// with regnorm's own credentials, and the answer is always yes.
func (r *Repository) Confirmed(now time.Time) bool { return r.reg.confirmed(r.name, now) }

// Confirm remembers the upstream's yes to these credentials for the
// repository.
func (r *Repository) Confirm(now time.Time) { r.reg.confirm(r.name, now) }

// path is the registry API's path of an object of the repository: kind is
// "manifests", "blobs", "tags" or "referrers", ref a reference, a digest,
// or "list".
func (r *Repository) path(kind, ref string) string {
	return "/v2/" + r.name + "/" + kind + "/" + ref
}
