// Package webhook is regnorm's mutating admission webhook for Pods
// (docs/webhook.md): for each image a Pod names by digest on a mirrored
// upstream, the variant that every containerd version of the fleet can run
// (the union of their rule sets), made within the admission's time budget,
// written into the Pod in place of the original, with the replacement
// recorded in the regnorm.dev/variants annotation. Images by tag, of other
// registries, of upstreams read with forwarded credentials, and clean ones
// are left as written; a variant not ready in time is made in the
// background and the Pod runs the original.
//
// It is a client of the repository service, as warm and the pre-made
// variants are: it reads each image through a mirror.Repository, as
// regnorm itself (the upstream's configured credentials), so that what it
// writes into a Pod is admitted like any pull by digest. It pins the blobs
// of the variants it writes (cache.Store.Pin) so that eviction keeps them
// while Pods name them: beside the admission, which waits for the pins
// within its deadline only, the rest written in the background (Run). It serves POST /mutate (and GET /healthz) on a
// listener of its own and nothing else; it does not import proxy/ and does
// not use gorilla/mux.
package webhook
