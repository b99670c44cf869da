// Package rewrite holds regnorm's normalization rules: pure functions from a
// manifest, index or config (bytes in) to new bytes, their digest, and a list
// of what changed and why.
//
// Edits are splices: the value being changed is replaced in place and every
// other byte of the document (order, whitespace, unknown fields, annotations)
// stays as it was. So the same input always yields the same output bytes, on
// every replica, and a document that needs nothing is returned untouched
// under its original digest.
//
// It imports only the standard library, go-digest, image-spec and compression
// libraries: no net/http, no logging, no metrics, no cache (see
// imports_test.go).
package rewrite
