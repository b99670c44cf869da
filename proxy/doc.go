// Package proxy is regnorm's HTTP side: the read half of the OCI
// distribution API, routing by containerd's ns parameter, client
// authentication and OCI error responses. It mounts the operator's pages
// and APIs (proxy/operator) and hands node-config's reports to the fleet
// (proxy/fleet).
//
// Its handlers parse a request, ask the repository service (proxy/mirror)
// and write its answer: every read of a repository's content, a client's,
// warm's or the rule engine's, goes through a mirror.Repository, which
// decides who may read what. It reads no flags, files or environment and
// registers no metrics globally: cmd/proxy builds its parts (the repository
// service, the upstreams, the rewrite report, the fleet) and hands them in
// Options, with the Metrics it registered.
package proxy
