package operator

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

//go:embed templates/status.html
var templates embed.FS

var statusTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"short": func(d digest.Digest) string {
		if len(d.Encoded()) < 16 {
			return d.String()
		}
		return d.Algorithm().String() + ":" + d.Encoded()[:12] + "…"
	},
	"ago":   ago,
	"bytes": humanBytes,
	"inc":   func(i int) int { return i + 1 },
	"dec":   func(i int) int { return i - 1 },
}).ParseFS(templates, "templates/status.html"))

// StatusCSP lets the status page run its own inline style and script, by
// their hashes, and nothing else: no other script, no inline handler, no
// loads, no framing; its filter form submits to itself.
var StatusCSP = func() string {
	src, err := templates.ReadFile("templates/status.html")
	if err != nil {
		panic(err)
	}
	return "default-src 'none'; style-src " + inlineHashes(src, "style") + "; script-src " + inlineHashes(src, "script") +
		"; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}()

// inlineHashes are the CSP sources ('sha256-…') of the template's inline
// elem elements, which must be static text: a hash stands for fixed bytes.
func inlineHashes(src []byte, elem string) string {
	re := regexp.MustCompile(`(?s)<` + elem + `>(.*?)</` + elem + `>`)
	var out []string
	for _, m := range re.FindAllSubmatch(src, -1) {
		if bytes.Contains(m[1], []byte("{{")) {
			panic("status.html: an inline " + elem + " with a template action cannot be allowed by its hash")
		}
		sum := sha256.Sum256(m[1])
		out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	if len(out) == 0 {
		return "'none'"
	}
	return strings.Join(out, " ")
}

// statusPageSize is how many rewritten images a page lists.
const statusPageSize = 50

type upstreamStatus struct {
	Name, Endpoint   string
	LastOK, LastFail time.Time
	Failure          string
	Failing          bool
	// HeldUntil is when its rate-limit hold ends (zero: none): until then
	// cached tags are served stale and cold ones refused with 429.
	HeldUntil time.Time
}

type statusData struct {
	Now        time.Time
	Uptime     string
	Rules      string
	AllClients bool
	Cache      *maintain.Usage
	Upstreams  []upstreamStatus
	Query      string
	Page       int
	Pages      int
	Total      int
	Hidden     int // entries of upstreams that forward credentials, not shown
	Matching   int
	Shown      int
	Entries    []cache.ReportEntry
	// NeedRepin are the first statusPageSize entries pulled by an original
	// digest, of NeedRepinCount.
	NeedRepin      []cache.ReportEntry
	NeedRepinCount int
	// The fleet: nodes pulling through, by containerd version; every node,
	// by state (at most maxNodeRows of each); how many share an address
	// with another.
	NodesPulling  int
	NodeVersions  []versionCount
	NodesNotCount int
	NodeGroups    []nodeGroup
	SharedNodes   int
	// Readiness is upgrade readiness, a row a rule set, for the versions
	// the fleet may move to and the one asked (Containerd).
	Readiness  []readinessRow
	Containerd string
}

// nodeGroup is the nodes of one state, as the page lists them.
type nodeGroup struct {
	// Kind is "not", "nopull" or "uses": which columns the page shows.
	Kind, State string
	Count       int
	Nodes       []fleet.NodeStatus
	// Collapsed: more than collapseNodes, shown when opened.
	Collapsed bool
}

const (
	// maxNodeRows is how many nodes of a state the page lists; the API
	// lists all of them.
	maxNodeRows = 1000
	// collapseNodes is how many nodes of a state the page lists open;
	// more are behind a summary line.
	collapseNodes = 20
)

type versionCount struct {
	Version string
	Count   int
}

// Upstream is what the status page shows of an upstream: where it is and
// how its requests went lately (*upstream.Registry).
type Upstream interface {
	Endpoint() string
	Health() (lastOK, lastFail time.Time, failure string)
	// HeldUntil is when its rate-limit hold ends; zero when none holds it.
	HeldUntil() time.Time
}

// Status is the status page and the rewrite report's API. Their sources are functions the server hands in,
// so the page needs none of the server's types.
type Status struct {
	// Report lists the rewrite report's entries the page may show, and how
	// many it may not (those of upstreams that forward credentials).
	Report func(ctx context.Context) (entries []cache.ReportEntry, hidden int, err error)
	// Nodes is the fleet view.
	Nodes func(ctx context.Context) ([]fleet.NodeStatus, error)
	// Usage is the cache's size as last measured (nil before the first
	// measure).
	Usage     func() *maintain.Usage
	Upstreams map[string]Upstream
	Rules     ruleset.Policy
	// Readiness is upgrade readiness, shown on the page when set.
	Readiness *Readiness
	Started   time.Time
	Now       func() time.Time
}

// Serve renders the status page: rewritten images (filtered and paged on
// the server, so a thousand entries stay readable), pulls that need
// re-pinning, upgrade readiness, and cache and upstream health.
func (s *Status) Serve(w http.ResponseWriter, r *http.Request) error {
	entries, hidden, err := s.Report(r.Context())
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading the rewrite report failed", err)
	}
	d := statusData{Now: s.Now().UTC(), Uptime: s.Now().Sub(s.Started).Round(time.Second).String(), Rules: s.Rules.Enabled.Key(), AllClients: s.Rules.AllClients,
		Cache: s.Usage(), Total: len(entries), Hidden: hidden, Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	for _, name := range slices.Sorted(maps.Keys(s.Upstreams)) {
		up := s.Upstreams[name]
		ok, fail, why := up.Health()
		d.Upstreams = append(d.Upstreams, upstreamStatus{Name: name, Endpoint: up.Endpoint(), LastOK: ok, LastFail: fail,
			Failure: why, Failing: fail.After(ok), HeldUntil: up.HeldUntil().UTC()})
	}
	nodes, err := s.Nodes(r.Context())
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading the node reports failed", err)
	}
	d.nodes(nodes)
	if s.Readiness != nil {
		d.Containerd = strings.TrimSpace(r.URL.Query().Get("containerd"))
		d.Readiness = s.Readiness.rows(r.Context(), nodes, d.Containerd)
	}
	var matching []cache.ReportEntry
	for _, e := range entries {
		if e.UnnormalizedPulls > 0 {
			if d.NeedRepinCount++; len(d.NeedRepin) < statusPageSize {
				d.NeedRepin = append(d.NeedRepin, e)
			}
		}
		if matches(e, d.Query) {
			matching = append(matching, e)
		}
	}
	groupVariants(matching)
	d.Matching = len(matching)
	d.Pages = max(1, (len(matching)+statusPageSize-1)/statusPageSize)
	d.Page, _ = strconv.Atoi(r.URL.Query().Get("page"))
	d.Page = min(max(d.Page, 1), d.Pages)
	start := (d.Page - 1) * statusPageSize
	d.Entries = matching[start:min(start+statusPageSize, len(matching))]
	d.Shown = len(d.Entries)

	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", StatusCSP)
	return statusTemplate.Execute(w, d)
}

// nodes fills in the page's fleet: counts, and the nodes by state (the
// view's order within each).
func (d *statusData) nodes(nodes []fleet.NodeStatus) {
	groups := []nodeGroup{{Kind: "not", State: fleet.StateDoesNot}, {Kind: "nopull", State: fleet.StateNoPull}, {Kind: "uses", State: fleet.StateUses}}
	counts := map[string]int{}
	for _, n := range nodes {
		if !n.LastPull.IsZero() {
			d.NodesPulling++
			counts[fleet.MinorVersion(n)]++
		}
		if n.AddressSharedBy > 0 {
			d.SharedNodes++
		}
		for i := range groups {
			if g := &groups[i]; g.State == n.State {
				if g.Count++; len(g.Nodes) < maxNodeRows {
					g.Nodes = append(g.Nodes, n)
				}
			}
		}
	}
	for _, v := range slices.Sorted(maps.Keys(counts)) {
		d.NodeVersions = append(d.NodeVersions, versionCount{v, counts[v]})
	}
	for _, g := range groups {
		if g.Kind == "not" {
			d.NodesNotCount = g.Count
		}
		if g.Count > 0 {
			g.Collapsed = g.Count > collapseNodes
			d.NodeGroups = append(d.NodeGroups, g)
		}
	}
}

// groupVariants puts the variants of one original together, the original
// served most recently first, and within it the variant with most rules.
func groupVariants(entries []cache.ReportEntry) {
	latest := map[string]time.Time{}
	group := func(e cache.ReportEntry) string { return e.Upstream + "/" + e.Repository + "@" + e.Original.String() }
	for _, e := range entries {
		if g := group(e); e.LastServed.After(latest[g]) {
			latest[g] = e.LastServed
		}
	}
	slices.SortStableFunc(entries, func(a, b cache.ReportEntry) int {
		ga, gb := group(a), group(b)
		return cmp.Or(latest[gb].Compare(latest[ga]), strings.Compare(ga, gb), ruleCount(b)-ruleCount(a), strings.Compare(a.Rules, b.Rules))
	})
}

// ruleCount is how many rules a report entry's variant has.
func ruleCount(e cache.ReportEntry) int {
	if e.Rules == "" || e.Rules == "none" {
		return 0
	}
	return strings.Count(e.Rules, ",") + 1
}

func matches(e cache.ReportEntry, q string) bool {
	if q == "" {
		return true
	}
	q = strings.ToLower(q)
	hay := strings.ToLower(strings.Join(slices.Concat([]string{e.Upstream, e.Repository, e.Original.String(), e.Normalized.String()}, e.Tags, e.Clients), " "))
	return strings.Contains(hay, q)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// reportPageSize is how many entries a page of /api/v1/rewrites lists.
const reportPageSize = 50

// ServeReport answers GET /api/v1/rewrites with a page of the rewrite
// entries (?page=N, from 1), most recently served first.
func (s *Status) ServeReport(w http.ResponseWriter, r *http.Request) error {
	entries, hidden, err := s.Report(r.Context())
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading the rewrite report failed", err)
	}
	pages := max(1, (len(entries)+reportPageSize-1)/reportPageSize)
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	page = min(max(page, 1), pages)
	start := (page - 1) * reportPageSize
	listed := entries[start:min(start+reportPageSize, len(entries))]
	if listed == nil {
		listed = []cache.ReportEntry{}
	}
	w.Header().Set("Content-Type", "application/json")
	return WriteJSON(w, map[string]any{"rewrites": listed, "hidden": hidden, "total": len(entries), "page": page, "pages": pages})
}

// WriteJSON writes v as the operator's APIs answer: indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
