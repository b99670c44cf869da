// Package verify checks a variant regnorm made without trusting regnorm's
// cache: it reads the variant's derivation attestation (proxy/attest) from
// any registry that holds it, checks its signature and its statement,
// optionally the vendor's cosign signature of the original it names
// (internal/cosign: the classic .sig or v3's bundle, with a key), then
// fetches the original the predicate names from its upstream and derives
// the variant again under the predicate's rules, with the rule engine
// (proxy/normalize) reading through a repository service (proxy/mirror)
// over a cache of its own in memory, and compares the digests.
//
// It is what `regnorm verify` runs; cmd/proxy reads the flags and files and
// builds the registry clients. It reads no file and no environment.
package verify
