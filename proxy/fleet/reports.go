package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
)

// Why Receive refuses a report.
var (
	// ErrInvalidReport: the report is not one regnorm takes (what is
	// wrong is in the error).
	ErrInvalidReport = errors.New("invalid node report")
	// ErrTooManyNodes: MaxNodes nodes are known, and the report is of a
	// new one.
	ErrTooManyNodes = errors.New("too many nodes")
)

// MaxReport caps a node-config report's body.
const MaxReport = 16 << 10

// maxReasons bounds a report's reasons: node-config gives at most four (an
// assumed version, a verdict, what --fix did and what the drop-in does).
const maxReasons = 8

// reportLimits bound each field of a report that is shown as it came (as
// data, in its own column or quoted): one over its limit is refused, not
// cut, so what the fleet view shows is what was sent.
var reportLimits = []struct {
	field string
	value func(*cache.NodeReport) string
	max   int
}{
	{"containerdVersion", func(r *cache.NodeReport) string { return r.ContainerdVersion }, 128},
	{"hostsDir", func(r *cache.NodeReport) string { return r.HostsDir }, 1024},
	{"configPath", func(r *cache.NodeReport) string { return r.ConfigPath }, 1024},
}

// Receive keeps node-config's report of one node in the cache, for every
// replica. The words the fleet view shows, and the lines to add, are never
// taken from the sender: View makes them from the report's codes and
// regnorm's own hosts directory. A report regnorm does not take is
// ErrInvalidReport; a new node past MaxNodes, ErrTooManyNodes (see place).
func (f *Fleet) Receive(ctx context.Context, rep cache.NodeReport) error {
	if err := f.check(rep); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidReport, err)
	}
	known, i, err := f.place(ctx, rep.Node)
	if i < 0 && err == nil {
		// A new node: its place is counted and taken under newcomers,
		// from a listing that has every earlier newcomer in it (each
		// drops the listing in use, below).
		select {
		case f.newcomers <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-f.newcomers }()
		known, i, err = f.place(ctx, rep.Node)
	}
	if err != nil {
		return err
	}
	now := f.clock.Now()
	rep.ReportedAt = now.UTC()
	putCtx, cancel := context.WithTimeout(ctx, reportTimeout)
	err = f.store.PutNodeReport(putCtx, rep)
	cancel()
	if err != nil {
		if i < 0 {
			f.reports.Forget() // it may have landed all the same
		}
		return fmt.Errorf("recording the node report: %w", err)
	}
	f.mu.Lock()
	if f.reported == nil {
		f.reported = map[string]bool{}
	}
	f.reported[rep.Node] = true // its pulls count for it from now on
	f.mu.Unlock()
	// A new node, or a node whose state changed, shows at once: the
	// listing in use is dropped. The reports every node repeats (every 5
	// minutes) leave it, or each would cost a walk of all of them.
	if i < 0 || !sameState(known[i], rep) {
		f.reports.Forget()
	}
	return nil
}

// reportTimeout bounds the writing of one report's record (a store that
// honours its context: S3 does, distribution's filesystem driver does not).
const reportTimeout = 30 * time.Second

// lingers is how long past the forget period a record still counts
// against the bound on new nodes, and is kept. A report of its node that
// began while it was live (its record then at most the forget period old)
// lands within reportTimeout; a listing that began before it landed is
// what misses it, so records are counted by the time their listing began:
// the old record of a node reporting again is in any listing that misses
// the new one, at most the forget period and reportTimeout old. Else a
// newcomer could take the place of a node that is reporting again.
const lingers = time.Minute

// place finds node among the live reports (those not yet forgotten):
// known[i] is its last report, or i is -1 for a node that has none, which
// is refused (ErrTooManyNodes) while maxReported others count against the
// bound (for lingers past their forget period, when the listing began). A node whose report is
// forgotten but not yet pruned is a new node: else a sender could let
// nodes be forgotten, report new ones in their places, and then the
// forgotten ones again. A live node may always report again.
func (f *Fleet) place(ctx context.Context, node string) (known []cache.NodeReport, i int, err error) {
	known, listed, err := f.listReportsAt(ctx)
	if err != nil {
		return nil, -1, fmt.Errorf("reading the node reports: %w", err)
	}
	now := f.clock.Now()
	if i = slices.IndexFunc(known, func(k cache.NodeReport) bool { return k.Node == node }); i >= 0 && now.Sub(known[i].ReportedAt) <= f.forget {
		return known, i, nil
	}
	counted := 0
	for _, k := range known {
		if k.Node != node && listed.Sub(k.ReportedAt) <= f.forget+lingers {
			counted++
		}
	}
	if counted >= f.maxReported {
		return nil, -1, fmt.Errorf("%w: %d nodes are known already", ErrTooManyNodes, f.maxReported)
	}
	return known, -1, nil
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

// check says what makes rep a report regnorm does not take, or nil.
// Nothing in it is words for an operator: the reasons are codes of a fixed
// set, each with values of a small set or a number, and the paths they and
// dropIn name are node-config's drop-in under the containerd configuration
// directory; the other strings are bounded and shown as data.
func (f *Fleet) check(rep cache.NodeReport) error {
	if rep.Node == "" {
		return errors.New("the report names no node")
	}
	if !ValidNodeName(rep.Node) {
		return fmt.Errorf("node %q is not a node's name: a DNS-1123 subdomain of at most %d characters", rep.Node, maxNodeName)
	}
	for _, l := range reportLimits {
		if v := l.value(&rep); len(v) > l.max || strings.ContainsFunc(v, unicode.IsControl) {
			return fmt.Errorf("%s is longer than %d bytes or holds control characters", l.field, l.max)
		}
	}
	if !printableASCII(rep.ConfigPath) {
		// Quoted in the reason regnorm shows: a look-alike of a quote
		// would let the value pass for regnorm's own words.
		return errors.New("configPath holds characters other than printable ASCII")
	}
	if !printableASCII(rep.ContainerdVersion) {
		return errors.New("containerdVersion holds characters other than printable ASCII")
	}
	if rep.Address != "" && net.ParseIP(rep.Address) == nil {
		return fmt.Errorf("address %q is not an IP address", rep.Address)
	}
	if rep.HostsDir != f.hostsDir {
		// The fleet view's fix names regnorm's hosts directory: a node
		// whose files go elsewhere would be told to read a directory it
		// does not write.
		return fmt.Errorf("hostsDir is not %s, the one regnorm is configured with (nodes.hostsDir): run node-config with --config-path %s, or set nodes.hostsDir", f.hostsDir, f.hostsDir)
	}
	if rep.ConfigVersion < 0 || rep.ConfigVersion > 99 {
		return fmt.Errorf("configVersion %d is not a containerd configuration version", rep.ConfigVersion)
	}
	if rep.Reason != "" || rep.Fix != "" {
		return errors.New("a report carries reasons (codes), not reason or fix: regnorm makes its own words (node-config of the same release sends them)")
	}
	if len(rep.Reasons) > maxReasons {
		return fmt.Errorf("more than %d reasons", maxReasons)
	}
	for _, r := range rep.Reasons {
		if err := r.Valid(); err != nil {
			return err
		}
		if r.Path != "" && !f.validDropIn(r.Path) {
			return fmt.Errorf("reason %s names %q, not node-config's drop-in (%s) in a directory under %s (nodes.containerdConfigDir)", r.Code, r.Path, containerdcfg.DropInName, f.configDir)
		}
	}
	if rep.DropIn != "" && !f.validDropIn(rep.DropIn) {
		return fmt.Errorf("dropIn %q is not node-config's drop-in (%s) in a directory under %s (nodes.containerdConfigDir)", rep.DropIn, containerdcfg.DropInName, f.configDir)
	}
	return nil
}

// validDropIn reports whether p can be node-config's drop-in: a file named
// containerdcfg.DropInName in a directory under the containerd
// configuration directory, as a clean path of printable ASCII without
// quotes.
func (f *Fleet) validDropIn(p string) bool {
	return ValidDir(p) && printableASCII(p) && path.Base(p) == containerdcfg.DropInName &&
		strings.HasPrefix(p, strings.TrimSuffix(f.configDir, "/")+"/")
}

// maxNodeName bounds a node's name: a Kubernetes node name is at most 253.
const maxNodeName = 253

// ValidNodeName reports whether s can name a node, in a report or a pull
// (NodeHeader): a DNS-1123 subdomain of at most 253 characters, as
// Kubernetes names nodes (node-config sends nothing else), so nothing in it
// can pass for words of regnorm's, end a TOML string or a header line.
func ValidNodeName(s string) bool {
	return len(s) <= maxNodeName && nodeName.MatchString(s)
}

var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// printableASCII reports whether s is printable ASCII only.
func printableASCII(s string) bool {
	return !strings.ContainsFunc(s, func(c rune) bool { return c < ' ' || c > '~' })
}

// ValidDir reports whether dir can be a directory that the fleet view
// names in a line of TOML: one clean absolute path, with nothing that would
// end the string or make a list.
func ValidDir(dir string) bool {
	return path.IsAbs(dir) && path.Clean(dir) == dir && len(dir) <= 1024 &&
		!strings.ContainsAny(dir, ":'\"\\") && !strings.ContainsFunc(dir, unicode.IsControl)
}

// Fit makes a report what regnorm takes: without words, which are
// regnorm's to make (Reason and Fix), and with the fields it shows as they
// came cut to their bounds, so that a long configPath does not make a
// node's report refused (and the node vanish from the fleet view). It is
// what node-config does before sending.
func Fit(r *cache.NodeReport) {
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
