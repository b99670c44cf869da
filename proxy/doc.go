// Package proxy is regnorm's HTTP side: the read half of the OCI
// distribution API, routing by containerd's ns parameter, client
// authentication, OCI error responses, and the operator's pages and APIs
// (report, status page, fleet view, warm).
//
// Its handlers parse a request, ask the repository service (proxy/mirror)
// and write its answer: every read of a repository's content, a client's,
// warm's or the rule engine's, goes through a mirror.Repository, which
// decides who may read what. It reads no flags, files or environment and
// registers no metrics globally: cmd/proxy hands it a configured Options and
// a prometheus.Registerer.
package proxy
