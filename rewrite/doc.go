// Package rewrite will hold regnorm's normalization rules: pure functions from
// manifests, configs and layer streams to new bytes, descriptors and a report.
// It must import only the standard library, go-digest, image-spec and
// compression libraries: no net/http, no logging, no metrics, no cache.
package rewrite
