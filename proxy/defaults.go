package proxy

import "time"

// DefaultDeadline is the wait for normalization by tag when Options say
// none: under containerd 2.3's 30 s response header timeout. Every part
// states its own defaults (upstream, blobfetch, normalize, maintain,
// fleet); cmd/proxy's configuration starts from the same constants, so a
// default is written once.
const DefaultDeadline = 25 * time.Second
