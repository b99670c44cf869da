package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// The fleet: which nodes pull through regnorm, with which containerd, and
// what node-config found on the nodes, those that never pulled included.
// A node "uses the mirror" only once a pull from it has come through.

// maxNodes bounds the nodes remembered; beyond it the least recently seen
// go first.
const maxNodes = 10000

// nodeSeen is what this process saw of one client address.
type nodeSeen struct {
	Address             string
	UserAgent           string
	FirstPull, LastPull time.Time
	Pulls               int64 // manifest requests: an index and its child are two
	OriginalDigestPulls int64
}

// fleet remembers the clients that pulled through this process.
type fleet struct {
	clock  Clock
	forget time.Duration
	// reports is node-config's reports as last listed from the store.
	reports *recent[[]cache.NodeReport]

	mu   sync.Mutex
	seen *lru.Cache[string, *nodeSeen]
}

func newFleet(clock Clock, forget time.Duration) *fleet {
	seen, err := lru.New[string, *nodeSeen](maxNodes)
	if err != nil {
		panic(err)
	}
	return &fleet{clock: clock, forget: forget, seen: seen, reports: newRecent[[]cache.NodeReport](clock)}
}

// sawPull notes a manifest request from the client of r, and whether it
// was by an original digest (whose pull regnorm cannot fix).
func (f *fleet) sawPull(r *http.Request, byOriginalDigest bool) {
	addr, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		addr = r.RemoteAddr
	}
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.seen.Get(addr)
	if !ok {
		n = &nodeSeen{Address: addr, FirstPull: now}
		f.seen.Add(addr, n)
	}
	n.UserAgent, n.LastPull = truncate(r.UserAgent(), 200), now
	n.Pulls++
	if byOriginalDigest {
		n.OriginalDigestPulls++
	}
}

// snapshot returns the clients seen within the forget period.
func (f *fleet) snapshot() []nodeSeen {
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []nodeSeen
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

// NodeStatus is one node of the fleet; the operator's package owns it.
type NodeStatus = operator.NodeStatus

// Node states.
const (
	stateUses    = operator.StateUses
	stateNoPull  = operator.StateNoPull
	stateDoesNot = operator.StateDoesNot
)

// fleetView merges what node-config reported with what this process saw,
// most recent first: nodes that do not use the mirror first of all.
func (s *Server) fleetView(ctx context.Context) ([]NodeStatus, error) {
	reports, err := s.fleet.reports.get(func() ([]cache.NodeReport, error) { return s.store.ListNodeReports(ctx) })
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	byAddr := map[string]*NodeStatus{}
	var out []*NodeStatus
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > s.fleet.forget {
			continue // pruneNodeReports deletes it
		}
		// What an operator reads is made here, from the report's codes
		// and regnorm's own hosts directory: never words a report brought
		// (an older regnorm kept a report's reason).
		r.Reason, r.Fix = "", ""
		if s.checkNodeReport(r) != nil {
			continue // taken before nodes.hostsDir or containerdConfigDir was what it is
		}
		r.Reason = containerdcfg.Explain(r.Reasons, r.ConfigPath, s.hostsDir)
		if !r.ReadsHostsToml && r.ConfigVersion > 0 {
			r.Fix = containerdcfg.FixFor(r.ConfigVersion, s.hostsDir)
		}
		n := &NodeStatus{Node: r.Node, Address: r.Address, ContainerdVersion: r.ContainerdVersion, NodeConfig: &r}
		out = append(out, n)
		if r.Address != "" {
			byAddr[r.Address] = n
		}
	}
	for _, seen := range s.fleet.snapshot() {
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
		n.Rules = s.rules.ForVersion(containerdcfg.ParseVersion(n.ContainerdVersion)).Rules.Key()
	}
	list := make([]NodeStatus, 0, len(out))
	for _, n := range out {
		switch {
		case !n.LastPull.IsZero():
			n.State = stateUses
		case n.NodeConfig != nil && n.NodeConfig.ReadsHostsToml:
			n.State = stateNoPull
		default:
			n.State = stateDoesNot
		}
		list = append(list, *n)
	}
	slices.SortFunc(list, func(a, b NodeStatus) int {
		if (a.State == stateDoesNot) != (b.State == stateDoesNot) {
			if a.State == stateDoesNot {
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

// containerdVersions are the values nodes are counted by
// (operator.ContainerdVersions).
var containerdVersions = operator.ContainerdVersions

// minorVersion is operator.MinorVersion.
var minorVersion = operator.MinorVersion

// DefaultHostsDir is where node-config writes hosts.toml files unless
// told otherwise: containerd's conventional config_path.
const DefaultHostsDir = "/etc/containerd/certs.d"

// DefaultContainerdConfigDir is the directory of containerd's
// configuration, unless told otherwise.
const DefaultContainerdConfigDir = "/etc/containerd"

// ValidHostsDir reports whether dir can be a hosts directory that the
// fleet view names in a line of TOML: one clean absolute path, with
// nothing that would end the string or make a list.
func ValidHostsDir(dir string) bool {
	return path.IsAbs(dir) && path.Clean(dir) == dir && len(dir) <= 1024 &&
		!strings.ContainsAny(dir, ":'\"\\") && !strings.ContainsFunc(dir, unicode.IsControl)
}

// reportChallenge is sent with a 401 to a node report.
const reportChallenge = `Bearer realm="regnorm node reports"`

// reportersOnly lets through the requests that carry one of the node
// report tokens, which only node-config holds: the fleet view tells
// operators what to change on their nodes, so no other client may write
// it. Without a token configured, no report is taken. A right token always
// gets in (it costs no bcrypt, and is too long to guess); a wrong one
// counts against the address's allowance of report failures, which is not
// that of client authentication: a node's failing reports do not stop its
// pulls, nor failing pulls its reports.
func (s *Server) reportersOnly(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if len(s.reportTokens) == 0 {
			return errcode.New(http.StatusForbidden, errcode.Denied, "node reports are off: regnorm has no report token (nodes.reportTokenFile)", nil)
		}
		tok, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if tok = strings.TrimSpace(tok); bearer && tokenIn(s.reportTokens, tok) {
			return h(w, r)
		}
		if tok != "" { // a guess; no credentials is none
			if err := s.reportAttempts.fail(attemptKey(r)); err != nil {
				return err
			}
		}
		e := errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "a node report needs the report token (node-config --report-token-file)", nil)
		e.Challenge = reportChallenge
		return e
	}
}

// maxNodeReport caps a node-config report's body.
const maxNodeReport = 16 << 10

// maxNodeReasons bounds a report's reasons: node-config gives at most four
// (an assumed version, a verdict, what --fix did and what the drop-in
// does).
const maxNodeReasons = 8

// nodeReportLimits bound each field of a report that is shown as it came
// (as data, in its own column or quoted): one over its limit is refused,
// not cut, so what the fleet view shows is what was sent.
var nodeReportLimits = []struct {
	field string
	value func(*cache.NodeReport) string
	max   int
}{
	{"node", func(r *cache.NodeReport) string { return r.Node }, 253},
	{"containerdVersion", func(r *cache.NodeReport) string { return r.ContainerdVersion }, 128},
	{"hostsDir", func(r *cache.NodeReport) string { return r.HostsDir }, 1024},
	{"configPath", func(r *cache.NodeReport) string { return r.ConfigPath }, 1024},
}

// checkNodeReport says what makes rep a report regnorm does not take, or
// nil. Nothing in it is words for an operator: the reasons are codes of a
// fixed set, each with values of a small set or a number, and the paths
// they and dropIn name are node-config's drop-in under nodes.containerdConfigDir;
// the other strings are bounded and shown as data.
func (s *Server) checkNodeReport(rep cache.NodeReport) error {
	if rep.Node == "" {
		return errors.New("the report names no node")
	}
	for _, l := range nodeReportLimits {
		if v := l.value(&rep); len(v) > l.max || strings.ContainsFunc(v, unicode.IsControl) {
			return fmt.Errorf("%s is longer than %d bytes or holds control characters", l.field, l.max)
		}
	}
	if rep.Address != "" && net.ParseIP(rep.Address) == nil {
		return fmt.Errorf("address %q is not an IP address", rep.Address)
	}
	if rep.HostsDir != s.hostsDir {
		// The fleet view's fix names regnorm's hosts directory: a node
		// whose files go elsewhere would be told to read a directory it
		// does not write.
		return fmt.Errorf("hostsDir is not %s, the one regnorm is configured with (nodes.hostsDir): run node-config with --config-path %s, or set nodes.hostsDir", s.hostsDir, s.hostsDir)
	}
	if rep.ConfigVersion < 0 || rep.ConfigVersion > 99 {
		return fmt.Errorf("configVersion %d is not a containerd configuration version", rep.ConfigVersion)
	}
	if rep.Reason != "" || rep.Fix != "" {
		return errors.New("a report carries reasons (codes), not reason or fix: regnorm makes its own words (node-config of the same release sends them)")
	}
	if len(rep.Reasons) > maxNodeReasons {
		return fmt.Errorf("more than %d reasons", maxNodeReasons)
	}
	for _, r := range rep.Reasons {
		if err := r.Valid(); err != nil {
			return err
		}
		if r.Path != "" && !s.validDropIn(r.Path) {
			return fmt.Errorf("reason %s names %q, not node-config's drop-in (%s) in a directory under %s (nodes.containerdConfigDir)", r.Code, r.Path, containerdcfg.DropInName, s.configDir)
		}
	}
	if rep.DropIn != "" && !s.validDropIn(rep.DropIn) {
		return fmt.Errorf("dropIn %q is not node-config's drop-in (%s) in a directory under %s (nodes.containerdConfigDir)", rep.DropIn, containerdcfg.DropInName, s.configDir)
	}
	return nil
}

// validDropIn reports whether p can be node-config's drop-in: a file named
// containerdcfg.DropInName in a directory under nodes.containerdConfigDir,
// as a clean path without quotes.
func (s *Server) validDropIn(p string) bool {
	return ValidHostsDir(p) && path.Base(p) == containerdcfg.DropInName &&
		strings.HasPrefix(p, strings.TrimSuffix(s.configDir, "/")+"/")
}

// FitNodeReport makes a report what regnorm takes: without words, which
// are regnorm's to make (Reason and Fix), and with the fields it shows as
// they came cut to their bounds, so that a long configPath does not make a
// node's report refused (and the node vanish from the fleet view). It is
// what node-config does before sending.
func FitNodeReport(r *cache.NodeReport) {
	r.Reason, r.Fix = "", ""
	for _, f := range []struct {
		p   *string
		max int
	}{{&r.ContainerdVersion, 128}, {&r.ConfigPath, 1024}} {
		if len(*f.p) > f.max {
			*f.p = strings.ToValidUTF8((*f.p)[:f.max-3], "") + "..."
		}
		*f.p = strings.Map(func(c rune) rune {
			if unicode.IsControl(c) {
				return ' '
			}
			return c
		}, *f.p)
	}
}

// receiveNodeReport answers POST /api/v1/nodes (behind reportersOnly):
// node-config's report of one node, kept in the cache for every replica.
// The words the fleet view shows, and the lines to add, are never taken
// from the sender: fleetView makes them from the report's codes and
// regnorm's own hosts directory.
func (s *Server) receiveNodeReport(w http.ResponseWriter, r *http.Request) error {
	var rep cache.NodeReport
	if err := readJSON(w, r, maxNodeReport, &rep, true, "a node report (regnorm node-config sends it)"); err != nil {
		return err
	}
	if err := s.checkNodeReport(rep); err != nil {
		return errcode.New(http.StatusBadRequest, errcode.Unsupported, err.Error(), nil)
	}
	now := s.clock.Now()
	known, err := s.fleet.reports.get(func() ([]cache.NodeReport, error) { return s.store.ListNodeReports(r.Context()) })
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading the node reports failed", err)
	}
	// A known node may always report again; a new one only while fewer
	// than maxNodes are remembered (forgotten ones do not count).
	live, i := 0, slices.IndexFunc(known, func(k cache.NodeReport) bool { return k.Node == rep.Node })
	for _, k := range known {
		if now.Sub(k.ReportedAt) <= s.fleet.forget {
			live++
		}
	}
	if live >= maxNodes && i < 0 {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, fmt.Sprintf("%d nodes are known already", maxNodes), nil)
	}
	rep.ReportedAt = now.UTC()
	if err := s.store.PutNodeReport(r.Context(), rep); err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "recording the node report failed", err)
	}
	// A new node, or a node whose state changed, shows at once: the
	// listing in use is dropped. The reports every node repeats (every 5
	// minutes) leave it, or each would cost a walk of all of them.
	if i < 0 || !sameState(known[i], rep) {
		s.fleet.reports.forget()
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// sameState reports whether two reports of a node say the same, their
// times apart.
func sameState(a, b cache.NodeReport) bool {
	if !slices.Equal(a.Reasons, b.Reasons) {
		return false
	}
	a.ReportedAt, b.ReportedAt = time.Time{}, time.Time{}
	a.Reasons, b.Reasons = nil, nil
	return reflect.DeepEqual(a, b)
}

// pruneNodeReports deletes the reports of nodes forgotten (not reported on
// for the forget period), in the background rather than on a request.
func (s *Server) pruneNodeReports(ctx context.Context) {
	reports, err := s.fleet.reports.get(func() ([]cache.NodeReport, error) { return s.store.ListNodeReports(ctx) })
	if err != nil {
		s.log.Warn("listing the node reports failed", "error", err)
		return
	}
	now, pruned := s.clock.Now(), false
	for _, r := range reports {
		if now.Sub(r.ReportedAt) > s.fleet.forget {
			// The listing may be seconds old: a report that has come since
			// (to another replica, say) stays.
			if cur, err := s.store.GetNodeReport(ctx, r.Node); err != nil || now.Sub(cur.ReportedAt) <= s.fleet.forget {
				continue
			}
			if err := s.store.DeleteNodeReport(ctx, r.Node); err != nil {
				s.log.Warn("forgetting a node failed", "node", r.Node, "error", err)
				continue
			}
			pruned = true
		}
	}
	if pruned {
		s.fleet.reports.forget()
	}
}

// countNodes keeps regnorm_nodes up to date, and prunes forgotten nodes'
// reports, until ctx ends.
func (s *Server) countNodes(ctx context.Context) {
	for {
		s.countNodesOnce()
		s.pruneNodeReports(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(nodeCountInterval):
		}
	}
}

// countNodesOnce sets regnorm_nodes: the nodes that pulled through this
// process within the forget period, by containerd minor version. It reads
// no storage.
func (s *Server) countNodesOnce() {
	counts := map[string]int{}
	for _, seen := range s.fleet.snapshot() {
		n := NodeStatus{LastPull: seen.LastPull}
		if v, ok := ruleset.Containerd(seen.UserAgent); ok {
			n.ContainerdVersion = v.Text
		}
		counts[minorVersion(n)]++
	}
	// Every value of the set is set, to 0 when no node has it: a scrape
	// in between two counts sees every series, never none.
	s.nodeCount.Lock()
	defer s.nodeCount.Unlock()
	for _, v := range containerdVersions.Values() {
		s.metrics.nodes.WithLabelValues(v).Set(float64(counts[v]))
	}
}

// nodeCountInterval is how often regnorm_nodes is recomputed.
const nodeCountInterval = 30 * time.Second

// ReportNode sends node-config's report of one node to regnorm's fleet
// view.
func (c Client) ReportNode(ctx context.Context, rep cache.NodeReport) error {
	if err := c.post(ctx, "/api/v1/nodes", rep, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("report node: %w", err)
	}
	return nil
}
