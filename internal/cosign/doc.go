// Package cosign reads and writes cosign's layouts of an image's
// signatures and attestations, offline and with keys only (no transparency
// log, no certificates): the classic layout (a sha256-<hex>.sig tag whose
// layers are simple-signing payloads, the signature in an annotation) and
// sigstore's bundle (application/vnd.dev.sigstore.bundle.v0.3+json, a DSSE
// envelope of an in-toto statement, in an artifact found through the
// referrers API), as cosign v3 writes them.
//
// It works on bytes: the caller reads them from a registry, bounded and
// verified against their digests, and decides what a verdict means. The
// formats are read with sigstore's own types (sigstore/sigstore's payload,
// protobuf-specs' bundle) and signatures checked with sigstore's verifiers
// and secure-systems-lab's DSSE. It imports no regnorm package, does no
// I/O and touches no file.
package cosign
