// Package blobfetch is the single-flight download of blobs from upstream
// into the cache: one download per upstream and digest, however many of
// that upstream's clients ask, each of them reading the download's spool as
// it grows, the cache filled beside it and published only once the digest
// verifies. Every resource it holds is bounded (see Fetcher). It reads the
// upstream through a Remote (an upstream.Repository, for one client) and
// builds no request of its own.
// It does not decide who may read a blob: its caller admits clients, and
// asks StartedBy and Answered to know when a download's upstream answer
// stands for a client too.
package blobfetch
