// Package proxy is regnorm's HTTP side: the read half of the OCI distribution
// API, routing by containerd's ns parameter, the upstream client with its
// token and Basic auth, single-flight fetching, and OCI error responses.
//
// It is the only package that speaks HTTP. It composes cache (storage) and,
// in later work, rewrite (normalization). It reads no flags, files or
// environment and registers no metrics globally: cmd/proxy hands it a
// configured Options and a prometheus.Registerer.
package proxy
