package fleet

import (
	"fmt"
	"slices"
	"time"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy/label"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// NodeStatus is one node of the fleet, as GET /api/v1/nodes lists it.
type NodeStatus struct {
	// Node is the node's name, from node-config's report or from its
	// pulls (NodeHeader).
	Node string `json:"node,omitempty"`
	// Address is where its pulls come from, else where node-config said
	// they would.
	Address string `json:"address"`
	// AddressSharedBy is, when other nodes have its address too (that of
	// its pulls or its report's), how many nodes have it, this one
	// included: their pulls that do not name their node cannot be told
	// apart.
	AddressSharedBy int `json:"addressSharedBy,omitempty"`
	// PullsMatchedBy says how its pulls were found: MatchedByHeader or
	// MatchedByAddress (none when it has not pulled).
	PullsMatchedBy string `json:"pullsMatchedBy,omitempty"`
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
	// NodeConfigFix says, for a node node-config finds does not read the
	// hosts.toml files, whether node-config --fix can make it.
	NodeConfigFix *FixOutlook `json:"nodeConfigFix,omitempty"`
}

// How a node's pulls were matched to it.
const (
	// MatchedByHeader: they carried its name (NodeHeader).
	MatchedByHeader = "node header"
	// MatchedByAddress: they named no node, and came from its address.
	MatchedByAddress = "address"
)

// FixOutlook is whether node-config --fix can make a node read the
// hosts.toml files, from its report's codes.
type FixOutlook struct {
	// Can is FixWritten, FixMay, FixCannot or FixFailed.
	Can string `json:"can"`
	// Why is that in regnorm's words.
	Why string `json:"why"`
}

// What node-config --fix can do for a node (FixOutlook.Can).
const (
	// FixWritten: --fix wrote a drop-in that fixes it; containerd applies
	// it when restarted.
	FixWritten = "written"
	// FixMay: --fix has not tried (node-config runs without it); it can
	// where containerd's configuration imports drop-ins.
	FixMay = "may"
	// FixCannot: --fix cannot; a person must add the lines.
	FixCannot = "cannot"
	// FixFailed: --fix tried and could not write its drop-in.
	FixFailed = "failed"
)

// fixOutlook says whether node-config --fix can fix the node of r, which
// does not read the hosts.toml files. What --fix did, when it ran, says it
// (its codes); else what DropIn refuses that the report shows: an
// unreadable configuration, an unknown containerd version, a version 1
// configuration, legacy mirrors. Whether the configuration imports
// drop-ins (and, on 1.x, sets more in its CRI section) a report does not
// say: --fix may, then.
func fixOutlook(r cache.NodeReport) *FixOutlook {
	explain := func(x containerdcfg.Reason) string { return containerdcfg.Explain([]containerdcfg.Reason{x}, "", "") }
	refused := func(why containerdcfg.Reason) *FixOutlook {
		why.Why, why.Code = why.Code, containerdcfg.FixRefused
		return &FixOutlook{Can: FixCannot, Why: explain(why)}
	}
	for _, x := range r.Reasons {
		switch x.Code {
		case containerdcfg.DropInWritten:
			return &FixOutlook{Can: FixWritten, Why: "--fix wrote it: " + explain(x)}
		case containerdcfg.FixRefused, containerdcfg.FixForeignFile, containerdcfg.DropInUnsafe, containerdcfg.DropInNoFix:
			return &FixOutlook{Can: FixCannot, Why: explain(x)}
		case containerdcfg.FixWriteFailed:
			return &FixOutlook{Can: FixFailed, Why: explain(x)}
		}
	}
	has := func(c containerdcfg.Code) bool {
		return slices.ContainsFunc(r.Reasons, func(x containerdcfg.Reason) bool { return x.Code == c })
	}
	switch {
	case has(containerdcfg.ConfigUnreadable):
		return &FixOutlook{Can: FixCannot, Why: "--fix cannot: " + explain(containerdcfg.Reason{Code: containerdcfg.ConfigUnreadable})}
	case has(containerdcfg.VersionAssumed):
		return refused(containerdcfg.Reason{Code: containerdcfg.VersionUnknown})
	case r.ConfigVersion == 1:
		return refused(containerdcfg.Reason{Code: containerdcfg.ConfigVersion1})
	case has(containerdcfg.LegacyMirrors):
		return refused(containerdcfg.Reason{Code: containerdcfg.LegacySettings, Key: "mirrors"})
	}
	return &FixOutlook{Can: FixMay, Why: `--fix (nodeConfig.fix.enabled) writes these lines as a drop-in where containerd's configuration imports drop-ins ` +
		`(such as "/etc/containerd/conf.d/*.toml"; on containerd 1.x only if it sets nothing else in its CRI section), applied when containerd restarts; ` +
		`node-config says so when it cannot`}
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
