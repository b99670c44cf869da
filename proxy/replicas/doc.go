// Package replicas shares one cache's work among the regnorm replicas that
// serve it: which replica owns a blob, a manifest or a variant (rendezvous
// hashing over the live replicas), how a replica proves to another that it
// is one (an HMAC of each request and each answer with a shared secret), and
// asking the owner (Peer). The owner does the work as any client of its own
// would have it done, once for all replicas; the asker relays the answer.
//
// It decides nothing about who may read what: the repository service
// (proxy/mirror) admits its client before it asks an owner, and the owner
// answers replicas only. It may import cache, proxy/errcode,
// proxy/ruleset and internal/mediatype (proxy/imports_test.go).
package replicas
