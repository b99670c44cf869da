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
// and a report of a new node is refused. Each replica holds its reports
// to it: several replicas taking new nodes' reports at the same moment
// may each take one more.
const MaxNodes = 10000

// NodeHeader is the header node-config has containerd send with every
// request to regnorm (it writes it into each hosts.toml): the node's name,
// as its report names it. A pull that carries one valid value is counted
// in that node's row, wherever it comes from; any other pull in the row of
// its address. It is not a credential: any client may send any name, and
// all it decides is the row a pull is counted in.
const NodeHeader = "Regnorm-Node"

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
	seen *lru.Cache[seenKey, *seen]
	// reported are the names of the nodes node-config reported on, as
	// last listed (and received since): a pull is counted for the node its
	// NodeHeader names only if it is one of them, so made-up names make no
	// rows (a report needs the report token).
	reported map[string]bool

	counting sync.Mutex // one count of regnorm_nodes at a time
	// newcomers is held (a slot of one) by a new node's report from the
	// listing it is counted against to its record: two at once would both
	// find the last place under maxReported free.
	newcomers chan struct{}
	// maxReported is MaxNodes, but in tests.
	maxReported int
}

// seenKey names what pulls are counted by: the node named by NodeHeader,
// else the address (one of the two is set).
type seenKey struct{ node, addr string }

// seen is what this process saw of one node, by its name, or of one
// address whose pulls named none.
type seen struct {
	// Node is the name the pulls carried (NodeHeader), if any.
	Node string
	// Address is where the last pull came from.
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
	seenNodes, err := lru.New[seenKey, *seen](MaxNodes)
	if err != nil {
		return nil, err
	}
	return &Fleet{store: opts.Store, hostsDir: opts.HostsDir, configDir: opts.ContainerdConfigDir, forget: opts.ForgetAfter,
		rules: opts.Rules, clock: opts.Clock, nodes: opts.Nodes, log: opts.Log,
		reports: recent.New[[]cache.NodeReport](opts.Clock.Now), seen: seenNodes,
		newcomers: make(chan struct{}, 1), maxReported: MaxNodes}, nil
}

// SawPull notes a manifest request from the client of r, and whether it
// was by an original digest (whose pull regnorm cannot fix): for the node
// r names (pullNode), else for its address.
func (f *Fleet) SawPull(r *http.Request, byOriginalDigest bool) {
	addr, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		addr = r.RemoteAddr
	}
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	key := seenKey{node: pullNode(r)}
	if !f.reported[key.node] {
		key = seenKey{addr: addr}
	}
	n, ok := f.seen.Get(key)
	if !ok {
		n = &seen{Node: key.node, FirstPull: now}
		f.seen.Add(key, n)
	}
	n.Address, n.UserAgent, n.LastPull = addr, truncate(r.UserAgent(), 200), now
	n.Pulls++
	if byOriginalDigest {
		n.OriginalDigestPulls++
	}
}

// pullNode is the node r names in NodeHeader: one value, a valid node
// name (ValidNodeName). Any other, or none, is "", and so is a name no
// report has: the pull is counted by its address.
func pullNode(r *http.Request) string {
	if v := r.Header.Values(NodeHeader); len(v) == 1 && ValidNodeName(v[0]) {
		return v[0]
	}
	return ""
}

// snapshot returns the nodes and addresses seen within the forget period.
func (f *Fleet) snapshot() []seen {
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seen
	for _, key := range f.seen.Keys() {
		n, _ := f.seen.Peek(key)
		if now.Sub(n.LastPull) > f.forget {
			f.seen.Remove(key)
			continue
		}
		out = append(out, *n)
	}
	return out
}

// RuleSets are the distinct rule sets of the containerd versions known in
// the fleet within the forget period: those of the nodes that pulled
// through this process (by their User-Agent), and of the nodes node-config
// reported on that read the hosts.toml files (they will pull through
// regnorm). Clients that name no containerd version, and nodes that do not
// use the mirror, are not counted: nothing says what they will pull. What
// the pre-made variants are made for.
func (f *Fleet) RuleSets(ctx context.Context) ([]ruleset.Set, error) {
	var out []ruleset.Set
	now := f.clock.Now()
	f.mu.Lock()
	for _, key := range f.seen.Keys() {
		n, _ := f.seen.Peek(key)
		if now.Sub(n.LastPull) > f.forget {
			continue // snapshot removes it
		}
		if v, ok := ruleset.Containerd(n.UserAgent); ok {
			out = f.addRules(out, v)
		}
	}
	f.mu.Unlock()
	reported, err := f.ReportedRuleSets(ctx)
	for _, rules := range reported {
		if !slices.Contains(out, rules) {
			out = append(out, rules)
		}
	}
	return out, err
}

// ReportedRuleSets are RuleSets of the nodes node-config reported on
// alone: records in the cache, which every replica reads alike, and
// nothing of what this process saw. What the admission webhook writes into
// Pods is decided by them (or by webhook.clients), so that every replica
// answers a Pod alike.
func (f *Fleet) ReportedRuleSets(ctx context.Context) ([]ruleset.Set, error) {
	reports, err := f.listReports(ctx)
	if err != nil {
		return nil, err
	}
	now := f.clock.Now()
	var out []ruleset.Set
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > f.forget || !r.ReadsHostsToml || f.check(r) != nil {
			continue
		}
		out = f.addRules(out, containerdcfg.ParseVersion(r.ContainerdVersion))
	}
	return out, nil
}

// addRules adds the rule set of v to sets, when v is known and its set is
// not there yet.
func (f *Fleet) addRules(sets []ruleset.Set, v containerdcfg.Version) []ruleset.Set {
	if !v.Known {
		return sets
	}
	if rules := f.rules.ForVersion(v).Rules; !slices.Contains(sets, rules) {
		sets = append(sets, rules)
	}
	return sets
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// listReports lists node-config's reports, or reuses a recent listing.
func (f *Fleet) listReports(ctx context.Context) ([]cache.NodeReport, error) {
	r, _, err := f.listReportsAt(ctx)
	return r, err
}

func (f *Fleet) listReportsAt(ctx context.Context) ([]cache.NodeReport, time.Time, error) {
	return f.reports.GetAt(func() ([]cache.NodeReport, error) {
		reports, err := f.store.ListNodeReports(ctx)
		if err != nil {
			return nil, err
		}
		reported := make(map[string]bool, len(reports))
		for _, r := range reports {
			reported[r.Node] = true
		}
		f.mu.Lock()
		f.reported = reported
		f.mu.Unlock()
		return reports, nil
	})
}

// View merges what node-config reported with what this process saw, most
// recent first: nodes that do not use the mirror first of all.
//
// A node's pulls are those that named it (NodeHeader), wherever they came
// from. Pulls that named no node are matched by address: to the one report
// of that address whose node has no pulls by name, else (several reports
// share it, or its node's pulls carry its name) they are a row of their
// own, the address's, since nothing tells whose they are. Nodes that share
// an address, by their reports or their pulls, say how many they are
// (AddressSharedBy).
func (f *Fleet) View(ctx context.Context) ([]NodeStatus, error) {
	reports, err := f.listReports(ctx)
	if err != nil {
		return nil, err
	}
	now := f.clock.Now()
	byNode := map[string]*NodeStatus{}
	byAddr := map[string][]*NodeStatus{} // the reported nodes at an address
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
			r.Fix = containerdcfg.FixForReport(r.Reasons, r.ConfigVersion, f.hostsDir)
		}
		n := &NodeStatus{Node: r.Node, Address: r.Address, ContainerdVersion: r.ContainerdVersion, NodeConfig: &r}
		if !r.ReadsHostsToml {
			n.NodeConfigFix = fixOutlook(r)
		}
		out = append(out, n)
		byNode[r.Node] = n
		if r.Address != "" {
			byAddr[r.Address] = append(byAddr[r.Address], n)
		}
	}
	var unnamed []seen
	for _, seen := range f.snapshot() {
		if seen.Node == "" {
			unnamed = append(unnamed, seen)
			continue
		}
		n, ok := byNode[seen.Node]
		if !ok {
			n = &NodeStatus{Node: seen.Node}
			byNode[seen.Node] = n
			out = append(out, n)
		}
		n.Address, n.PullsMatchedBy = seen.Address, MatchedByHeader // where its pulls come from
		n.sawPulls(seen)
	}
	for _, seen := range unnamed {
		var n *NodeStatus
		if at := byAddr[seen.Address]; len(at) == 1 && at[0].PullsMatchedBy == "" {
			n = at[0]
		} else {
			n = &NodeStatus{Address: seen.Address}
			out = append(out, n)
		}
		n.PullsMatchedBy = MatchedByAddress
		n.sawPulls(seen)
	}
	markShared(out)
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

// sawPulls sets what n's pulls say of it.
func (n *NodeStatus) sawPulls(s seen) {
	n.UserAgent, n.LastPull, n.Pulls, n.OriginalDigestPulls = s.UserAgent, s.LastPull, s.Pulls, s.OriginalDigestPulls
	if v, ok := ruleset.Containerd(s.UserAgent); ok {
		n.ContainerdVersion = v.Text
	}
}

// markShared sets AddressSharedBy on the nodes whose address, that of their
// pulls or of their report, is another's too.
func markShared(nodes []*NodeStatus) {
	addresses := func(n *NodeStatus) []string {
		a := []string{n.Address}
		if n.NodeConfig != nil && n.NodeConfig.Address != n.Address {
			a = append(a, n.NodeConfig.Address)
		}
		return slices.DeleteFunc(a, func(s string) bool { return s == "" })
	}
	count := map[string]int{}
	for _, n := range nodes {
		for _, a := range addresses(n) {
			count[a]++
		}
	}
	for _, n := range nodes {
		for _, a := range addresses(n) {
			if c := count[a]; c > 1 {
				n.AddressSharedBy = max(n.AddressSharedBy, c)
			}
		}
	}
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
// within the forget period, by containerd minor version: a node by its
// name when its pulls carry it (wherever they come from), else an address.
// It reads no storage.
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
// forget period) once they no longer count against the bound on new nodes
// (lingers), in the background rather than on a request.
func (f *Fleet) Prune(ctx context.Context) {
	reports, err := f.listReports(ctx)
	if err != nil {
		f.log.Warn("listing the node reports failed", "error", err)
		return
	}
	now, pruned := f.clock.Now(), false
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > f.forget+lingers {
			// The listing may be seconds old: a report that has come since
			// (to another replica, say) stays.
			if cur, err := f.store.GetNodeReport(ctx, r.Node); err != nil || now.Sub(cur.ReportedAt) <= f.forget+lingers {
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
