// Package mirror is the repository service: one upstream repository, read
// as one client, and the one way anything reads a repository's content.
// The HTTP handlers, warm and the rule engine (through Repository.Source)
// ask a Repository for manifests, blobs and tags; it decides who may read
// what (admission: the repository's links, the upstream's yes to forwarded
// credentials, what regnorm made from what), answers from the cache or from
// the upstream as the client, shares fetches and downloads, and has the
// rule engine make the client's variant. Like distribution's registry/proxy,
// pull-through is behind the same calls a registry's handlers make.
//
// It takes its collaborators as the few methods it uses (Store, Fetcher,
// Engine), asks the upstream only through an upstream.Repository, and
// neither routes nor writes HTTP answers: proxy/ does, and translates the
// *errcode.Error it returns. It may import cache, proxy/upstream,
// proxy/blobfetch, proxy/normalize, proxy/ruleset and proxy/errcode
// (proxy/imports_test.go).
package mirror
