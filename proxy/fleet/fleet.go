package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/internal/recent"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// MaxNodes bounds the nodes remembered, those seen pulling and those
// reported on, each: beyond it the least recently seen pulling go first,
// and a report of a new node is refused.
const MaxNodes = 10000

// Defaults of Options' zero fields.
const (
	// DefaultForgetAfter drops a node from the fleet view.
	DefaultForgetAfter = 24 * time.Hour
	// DefaultHostsDir is where node-config writes hosts.toml files unless
	// told otherwise: containerd's conventional config_path.
	DefaultHostsDir = "/etc/containerd/certs.d"
	// DefaultContainerdConfigDir is the directory of containerd's
	// configuration, unless told otherwise.
	DefaultContainerdConfigDir = "/etc/containerd"
)

// Store is what the fleet keeps in the cache: node-config's reports, shared
// by every replica.
type Store interface {
	cache.NodeStore
}

// Clock is the time the fleet goes by.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

// Options configure a Fleet. Store, Rules, Clock, Nodes and Log are
// required.
type Options struct {
	Store Store
	// HostsDir is the directory node-config writes hosts.toml files to
	// (its --config-path). A report about another is refused, and the lines
	// the fleet view says to add to containerd's configuration name this
	// one, never a path a report brought. Default DefaultHostsDir.
	HostsDir string
	// ContainerdConfigDir is the directory of containerd's configuration
	// on the nodes: node-config's drop-in, which a report may name, is in a
	// directory under it. A report naming one elsewhere is refused. Default
	// DefaultContainerdConfigDir.
	ContainerdConfigDir string
	// ForgetAfter drops a node when it has neither pulled nor been
	// reported on for this long. Default DefaultForgetAfter.
	ForgetAfter time.Duration
	// Rules say which normalizations a node's pulls get.
	Rules ruleset.Policy
	Clock Clock
	// Nodes is regnorm_nodes, by containerd minor version
	// (ContainerdVersions).
	Nodes *prometheus.GaugeVec
	Log   *slog.Logger
}

// Fleet remembers the nodes: the clients that pulled through this process,
// and node-config's reports, which every replica shares through the cache.
type Fleet struct {
	store     Store
	hostsDir  string
	configDir string
	forget    time.Duration
	rules     ruleset.Policy
	clock     Clock
	nodes     *prometheus.GaugeVec
	log       *slog.Logger
	// reports is node-config's reports as last listed from the store.
	reports *recent.Listing[[]cache.NodeReport]

	mu   sync.Mutex
	seen *lru.Cache[string, *seen]

	counting sync.Mutex // one count of regnorm_nodes at a time
}

// seen is what this process saw of one client address.
type seen struct {
	Address             string
	UserAgent           string
	FirstPull, LastPull time.Time
	Pulls               int64 // manifest requests: an index and its child are two
	OriginalDigestPulls int64
}

// New checks opts and builds a Fleet.
func New(opts Options) (*Fleet, error) {
	if opts.HostsDir == "" {
		opts.HostsDir = DefaultHostsDir
	}
	if !ValidDir(opts.HostsDir) {
		return nil, fmt.Errorf("fleet: hosts directory %q is not a clean absolute path without ':' or quotes", opts.HostsDir)
	}
	if opts.ContainerdConfigDir == "" {
		opts.ContainerdConfigDir = DefaultContainerdConfigDir
	}
	if !ValidDir(opts.ContainerdConfigDir) {
		return nil, fmt.Errorf("fleet: containerd configuration directory %q is not a clean absolute path without ':' or quotes", opts.ContainerdConfigDir)
	}
	if opts.ForgetAfter <= 0 {
		opts.ForgetAfter = DefaultForgetAfter
	}
	seenNodes, err := lru.New[string, *seen](MaxNodes)
	if err != nil {
		return nil, err
	}
	return &Fleet{store: opts.Store, hostsDir: opts.HostsDir, configDir: opts.ContainerdConfigDir, forget: opts.ForgetAfter,
		rules: opts.Rules, clock: opts.Clock, nodes: opts.Nodes, log: opts.Log,
		reports: recent.New[[]cache.NodeReport](opts.Clock.Now), seen: seenNodes}, nil
}

// SawPull notes a manifest request from the client of r, and whether it
// was by an original digest (whose pull regnorm cannot fix).
func (f *Fleet) SawPull(r *http.Request, byOriginalDigest bool) {
	addr, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		addr = r.RemoteAddr
	}
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.seen.Get(addr)
	if !ok {
		n = &seen{Address: addr, FirstPull: now}
		f.seen.Add(addr, n)
	}
	n.UserAgent, n.LastPull = truncate(r.UserAgent(), 200), now
	n.Pulls++
	if byOriginalDigest {
		n.OriginalDigestPulls++
	}
}

// snapshot returns the clients seen within the forget period.
func (f *Fleet) snapshot() []seen {
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seen
	for _, addr := range f.seen.Keys() {
		n, _ := f.seen.Peek(addr)
		if now.Sub(n.LastPull) > f.forget {
			f.seen.Remove(addr)
			continue
		}
		out = append(out, *n)
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// listReports lists node-config's reports, or reuses a recent listing.
func (f *Fleet) listReports(ctx context.Context) ([]cache.NodeReport, error) {
	return f.reports.Get(func() ([]cache.NodeReport, error) { return f.store.ListNodeReports(ctx) })
}

// View merges what node-config reported with what this process saw, most
// recent first: nodes that do not use the mirror first of all.
func (f *Fleet) View(ctx context.Context) ([]NodeStatus, error) {
	reports, err := f.listReports(ctx)
	if err != nil {
		return nil, err
	}
	now := f.clock.Now()
	byAddr := map[string]*NodeStatus{}
	var out []*NodeStatus
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > f.forget {
			continue // prune deletes it
		}
		// What an operator reads is made here, from the report's codes
		// and regnorm's own hosts directory: never words a report brought
		// (an older regnorm kept a report's reason).
		r.Reason, r.Fix = "", ""
		if f.check(r) != nil {
			continue // taken before nodes.hostsDir or containerdConfigDir was what it is
		}
		r.Reason = containerdcfg.Explain(r.Reasons, r.ConfigPath, f.hostsDir)
		if !r.ReadsHostsToml && r.ConfigVersion > 0 {
			r.Fix = containerdcfg.FixFor(r.ConfigVersion, f.hostsDir)
		}
		n := &NodeStatus{Node: r.Node, Address: r.Address, ContainerdVersion: r.ContainerdVersion, NodeConfig: &r}
		out = append(out, n)
		if r.Address != "" {
			byAddr[r.Address] = n
		}
	}
	for _, seen := range f.snapshot() {
		n, ok := byAddr[seen.Address]
		if !ok {
			n = &NodeStatus{Address: seen.Address}
			out = append(out, n)
		}
		n.UserAgent, n.LastPull, n.Pulls, n.OriginalDigestPulls = seen.UserAgent, seen.LastPull, seen.Pulls, seen.OriginalDigestPulls
		if v, ok := ruleset.Containerd(seen.UserAgent); ok {
			n.ContainerdVersion = v.Text
		}
	}
	for _, n := range out {
		n.Rules = f.rules.ForVersion(containerdcfg.ParseVersion(n.ContainerdVersion)).Rules.Key()
	}
	list := make([]NodeStatus, 0, len(out))
	for _, n := range out {
		switch {
		case !n.LastPull.IsZero():
			n.State = StateUses
		case n.NodeConfig != nil && n.NodeConfig.ReadsHostsToml:
			n.State = StateNoPull
		default:
			n.State = StateDoesNot
		}
		list = append(list, *n)
	}
	slices.SortFunc(list, func(a, b NodeStatus) int {
		if (a.State == StateDoesNot) != (b.State == StateDoesNot) {
			if a.State == StateDoesNot {
				return -1
			}
			return 1
		}
		if c := b.LastPull.Compare(a.LastPull); c != 0 {
			return c
		}
		return strings.Compare(a.Node+a.Address, b.Node+b.Address)
	})
	return list, nil
}

// countInterval is how often regnorm_nodes is recomputed and forgotten
// nodes' reports are deleted.
const countInterval = 30 * time.Second

// Run keeps regnorm_nodes up to date, and prunes forgotten nodes'
// reports, until ctx ends.
func (f *Fleet) Run(ctx context.Context) {
	for {
		f.Count()
		f.Prune(ctx)
		select {
		case <-ctx.Done():
			return
		case <-f.clock.After(countInterval):
		}
	}
}

// Count sets regnorm_nodes: the nodes that pulled through this process
// within the forget period, by containerd minor version. It reads no
// storage.
func (f *Fleet) Count() {
	counts := map[string]int{}
	for _, seen := range f.snapshot() {
		n := NodeStatus{LastPull: seen.LastPull}
		if v, ok := ruleset.Containerd(seen.UserAgent); ok {
			n.ContainerdVersion = v.Text
		}
		counts[MinorVersion(n)]++
	}
	// Every value of the set is set, to 0 when no node has it: a scrape
	// in between two counts sees every series, never none.
	f.counting.Lock()
	defer f.counting.Unlock()
	for _, v := range ContainerdVersions.Values() {
		f.nodes.WithLabelValues(v).Set(float64(counts[v]))
	}
}

// Prune deletes the reports of nodes forgotten (not reported on for the
// forget period), in the background rather than on a request.
func (f *Fleet) Prune(ctx context.Context) {
	reports, err := f.listReports(ctx)
	if err != nil {
		f.log.Warn("listing the node reports failed", "error", err)
		return
	}
	now, pruned := f.clock.Now(), false
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > f.forget {
			// The listing may be seconds old: a report that has come since
			// (to another replica, say) stays.
			if cur, err := f.store.GetNodeReport(ctx, r.Node); err != nil || now.Sub(cur.ReportedAt) <= f.forget {
				continue
			}
			if err := f.store.DeleteNodeReport(ctx, r.Node); err != nil {
				f.log.Warn("forgetting a node failed", "node", r.Node, "error", err)
				continue
			}
			pruned = true
		}
	}
	if pruned {
		f.reports.Forget()
	}
}
