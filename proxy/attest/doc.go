// Package attest makes regnorm's derivation attestation of a variant: an
// in-toto Statement v1 whose subject is the variant and whose predicate
// (PredicateType) says what it was made from and how, in a DSSE envelope
// signed with the operator's key (or unsigned without one), and the OCI
// artifact that carries it, whose subject is the variant, laid out as
// cosign's classic attestations are (cosign verify-attestation finds it
// under the sha256-<hex>.att tag); with a key, also as cosign v3's sigstore
// bundle of the same envelope (MakeBundle), found through the referrers
// API.
//
// Same input, same bytes: the statement is encoded with its keys in a
// fixed, sorted order and holds no time; ed25519 signatures are
// deterministic, and ECDSA ones are made as RFC 6979 says, so that every
// replica holding the key makes the same envelope, artifact and digest.
//
// It does no I/O: keys come in as PEM bytes (cmd/proxy reads the file),
// and the caller stores and serves what it makes. Of regnorm's packages it
// imports only internal/cosign, which knows cosign's formats
// (proxy/imports_test.go).
package attest
