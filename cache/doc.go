// Package cache owns regnorm's content-addressed store: blobs, manifests and
// tag records kept on a distribution storage driver (filesystem, inmemory, and
// later S3).
//
// Everything that becomes visible in the cache has been verified: blobs are
// written to a temporary path, their size and digest checked, and only then
// moved to their content-addressed path; manifests are checked against their
// digest when written and again when read.
//
// The package knows storage, not HTTP and not rewriting: it must not import
// net/http handlers, the proxy package or the rewrite package.
package cache
