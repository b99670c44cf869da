package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
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
	stateUses    = "uses the mirror"
	stateNoPull  = "no pull seen yet"
	stateDoesNot = "does not use the mirror"
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
			if err := s.store.DeleteNodeReport(ctx, r.Node); err != nil {
				s.log.Warn("forgetting a node failed", "node", r.Node, "error", err)
			}
			continue
		}
		r := r
		n := &NodeStatus{Node: r.Node, Address: r.Address, ContainerdVersion: r.ContainerdVersion, Rules: s.rules.key(), NodeConfig: &r}
		out = append(out, n)
		if r.Address != "" {
			byAddr[r.Address] = n
		}
	}
	for _, seen := range s.fleet.snapshot() {
		n, ok := byAddr[seen.Address]
		if !ok {
			n = &NodeStatus{Address: seen.Address, Rules: s.rules.key()}
			out = append(out, n)
		}
		n.UserAgent, n.LastPull, n.Pulls, n.OriginalDigestPulls = seen.UserAgent, seen.LastPull, seen.Pulls, seen.OriginalDigestPulls
		if m := containerdUserAgent.FindStringSubmatch(seen.UserAgent); m != nil {
			n.ContainerdVersion = m[1] + "." + m[2] + "." + m[3]
		}
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

// minorVersion is "1.6" for "1.6.20~ds1", or "other" for a client that is
// not containerd.
func minorVersion(n NodeStatus) string {
	v := containerdcfg.ParseVersion(n.ContainerdVersion)
	if !v.Known || n.LastPull.IsZero() {
		return "other"
	}
	return fmt.Sprintf("%d.%d", v.Major, v.Minor)
}

// serveNodes answers GET /api/v1/nodes.
func (s *Server) serveNodes(w http.ResponseWriter, r *http.Request) error {
	nodes, err := s.fleetView(r.Context())
	if err != nil {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "reading the node reports failed", err)
	}
	byVersion := map[string]int{}
	for _, n := range nodes {
		if !n.LastPull.IsZero() {
			byVersion[minorVersion(n)]++
		}
	}
	w.Header().Set("Content-Type", "application/json")
	return writeJSON(w, map[string]any{"nodes": nodes, "pullingByContainerd": byVersion})
}

// maxNodeReport caps a node-config report's body.
const maxNodeReport = 64 << 10

// receiveNodeReport answers POST /api/v1/nodes: node-config's report of one
// node, kept in the cache for every replica.
func (s *Server) receiveNodeReport(w http.ResponseWriter, r *http.Request) error {
	var rep cache.NodeReport
	dec := json.NewDecoder(io.LimitReader(r.Body, maxNodeReport))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		return newError(http.StatusBadRequest, CodeUnsupported, "body must be a node report (regnorm node-config sends it)", err)
	}
	switch {
	case rep.Node == "" || len(rep.Node) > 253:
		return newError(http.StatusBadRequest, CodeUnsupported, "the report names no node, or a name over 253 characters", nil)
	case rep.Address != "" && net.ParseIP(rep.Address) == nil:
		return newError(http.StatusBadRequest, CodeUnsupported, fmt.Sprintf("address %q is not an IP address", rep.Address), nil)
	}
	for _, f := range []*string{&rep.ContainerdVersion, &rep.HostsDir, &rep.ConfigPath, &rep.Reason, &rep.Fix, &rep.DropIn} {
		*f = truncate(*f, 4096)
	}
	known, err := s.fleet.reports.get(func() ([]cache.NodeReport, error) { return s.store.ListNodeReports(r.Context()) })
	if err != nil {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "reading the node reports failed", err)
	}
	if len(known) >= maxNodes && !slices.ContainsFunc(known, func(k cache.NodeReport) bool { return k.Node == rep.Node }) {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, fmt.Sprintf("%d nodes are known already", maxNodes), nil)
	}
	rep.ReportedAt = s.clock.Now().UTC()
	if err := s.store.PutNodeReport(r.Context(), rep); err != nil {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "recording the node report failed", err)
	}
	s.fleet.reports.forget()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// countNodes keeps regnorm_nodes up to date until ctx ends.
func (s *Server) countNodes(ctx context.Context) {
	for {
		s.countNodesOnce()
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
	counts := map[string]int{"other": 0}
	for _, seen := range s.fleet.snapshot() {
		n := NodeStatus{LastPull: seen.LastPull}
		if m := containerdUserAgent.FindStringSubmatch(seen.UserAgent); m != nil {
			n.ContainerdVersion = m[1] + "." + m[2] + "." + m[3]
		}
		counts[minorVersion(n)]++
	}
	s.metrics.nodes.Reset()
	for v, c := range counts {
		s.metrics.nodes.WithLabelValues(v).Set(float64(c))
	}
}

// nodeCountInterval is how often regnorm_nodes is recomputed.
const nodeCountInterval = 30 * time.Second

// ReportNode sends node-config's report of one node to the regnorm at
// server. client carries the TLS configuration; token, when set, is sent
// as a bearer token.
func ReportNode(ctx context.Context, client *http.Client, server, token string, rep cache.NodeReport) error {
	body, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(server, "/")+"/api/v1/nodes", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("report node: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		var e errorBody
		if json.NewDecoder(io.LimitReader(resp.Body, maxErrorBody)).Decode(&e) == nil && len(e.Errors) > 0 {
			return fmt.Errorf("report node: %s: %s: %s", resp.Status, e.Errors[0].Code, e.Errors[0].Message)
		}
		return errors.New("report node: " + resp.Status)
	}
	return nil
}
