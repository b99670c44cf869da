package proxy

import "time"

// What a zero field of Options takes. cmd/proxy's configuration starts from
// the same constants, so a default is written once.
const (
	// DefaultFetchTimeout bounds one blob download.
	DefaultFetchTimeout = time.Hour
	// DefaultStallTimeout abandons an upstream response silent this long.
	DefaultStallTimeout = 30 * time.Second
	// DefaultDeadline is the wait for normalization by tag: under
	// containerd 2.3's 30 s response header timeout.
	DefaultDeadline = 25 * time.Second
	// DefaultMaxLayerSize bounds how far a layer is decompressed to scan it.
	DefaultMaxLayerSize = 16 << 30
	// DefaultMaxBlobSize bounds one blob downloaded from upstream.
	DefaultMaxBlobSize = 16 << 30
	// DefaultMaintenanceInterval is how often a cache of one process is
	// measured, evicted and cleaned.
	DefaultMaintenanceInterval = time.Minute
	// DefaultForgetNodesAfter drops a node from the fleet view.
	DefaultForgetNodesAfter = 24 * time.Hour
)
