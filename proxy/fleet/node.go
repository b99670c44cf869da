package fleet

import (
	"fmt"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy/label"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// NodeStatus is one node of the fleet, as GET /api/v1/nodes lists it.
type NodeStatus struct {
	// Node is the node's name, from node-config.
	Node string `json:"node,omitempty"`
	// Address is where its pulls come from.
	Address string `json:"address"`
	// ContainerdVersion is from the User-Agent of its pulls, else from
	// node-config.
	ContainerdVersion string `json:"containerdVersion,omitempty"`
	UserAgent         string `json:"userAgent,omitempty"`
	// Rules are the normalizations its pulls get.
	Rules string `json:"rules"`
	// State is "uses the mirror" (a pull came through), "no pull seen yet"
	// (node-config expects containerd to use it), or "does not use the
	// mirror" (node-config found why not: Reason, and Fix).
	State    string    `json:"state"`
	LastPull time.Time `json:"lastPull,omitzero"`
	// Pulls counts its manifest requests (an index and its child are two),
	// OriginalDigestPulls those by an original digest regnorm normalizes.
	Pulls               int64             `json:"pulls"`
	OriginalDigestPulls int64             `json:"originalDigestPulls"`
	NodeConfig          *cache.NodeReport `json:"nodeConfig,omitempty"`
}

// Node states.
const (
	StateUses    = "uses the mirror"
	StateNoPull  = "no pull seen yet"
	StateDoesNot = "does not use the mirror"
)

// ContainerdVersions are the values nodes are counted by, in
// regnorm_nodes' containerd label and on the status page: the minor
// versions ruleset knows, UnknownVersion for a client that names no
// containerd version, and label.Other for any other version, which a
// client may make up. Their series are a fixed set, whatever the
// User-Agents.
var ContainerdVersions = label.NewSet(append(ruleset.Minors(), UnknownVersion)...)

// UnknownVersion counts the clients that are not containerd.
const UnknownVersion = "unknown"

// MinorVersion is "1.6" for "1.6.20~ds1", label.Other for a version
// outside ContainerdVersions, or UnknownVersion for a client that is not
// containerd (or a node that has not pulled).
func MinorVersion(n NodeStatus) string {
	v := containerdcfg.ParseVersion(n.ContainerdVersion)
	if !v.Known || n.LastPull.IsZero() {
		return UnknownVersion
	}
	return ContainerdVersions.Of(fmt.Sprintf("%d.%d", v.Major, v.Minor))
}
