// Package ruleset decides which normalization rules a client gets: the
// rules an operator enabled, narrowed to those the client's containerd
// version needs (docs/containerd.md). A node that can pull an original gets
// the original; a node that cannot gets the variant made for its rule set.
//
// It knows versions and rule names, not HTTP, caches or manifests.
package ruleset

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/regnorm/regnorm/internal/containerdcfg"
)

// Rule names, as configured and as reported.
const (
	ConfigMediaType = "config-media-type"
	SymlinkXattrs   = "symlink-xattrs"
	ZstdMediaType   = "zstd-media-type"
	Schema1         = "schema1"
	ZstdGzip        = "zstd-gzip"
	IndexSizes      = "index-sizes"
	LayerMediaType  = "layer-media-type"
	DiffIDs         = "diff-ids"
	GNUSparse       = "gnu-sparse"
)

// rule is a rule's name and its switch in a Set.
type rule struct {
	name string
	in   func(*Set) *bool
	// optIn rules are off unless the operator turns them on (Default).
	optIn bool
}

// rules are the rules by name, each with its switch in a Set, in the order
// keys name them: the one list Names, All, Default, Parse, Key,
// Intersect and Union go by.
var rules = []rule{
	{ConfigMediaType, func(s *Set) *bool { return &s.ConfigMediaType }, false},
	{SymlinkXattrs, func(s *Set) *bool { return &s.SymlinkXattrs }, false},
	{ZstdMediaType, func(s *Set) *bool { return &s.ZstdMediaType }, false},
	{Schema1, func(s *Set) *bool { return &s.Schema1 }, false},
	{ZstdGzip, func(s *Set) *bool { return &s.ZstdGzip }, false},
	{IndexSizes, func(s *Set) *bool { return &s.IndexSizes }, false},
	{LayerMediaType, func(s *Set) *bool { return &s.LayerMediaType }, false},
	{DiffIDs, func(s *Set) *bool { return &s.DiffIDs }, false},
	// Opt-in: whether a layer has GNU sparse entries only a read of the
	// whole layer can tell, so with it every client's first answer by tag
	// waits for every layer of the image (see Set.GNUSparse).
	{GNUSparse, func(s *Set) *bool { return &s.GNUSparse }, true},
}

// Names lists every rule, in the order keys name them.
func Names() []string {
	names := make([]string, len(rules))
	for i, r := range rules {
		names[i] = r.name
	}
	return names
}

// Set is a set of rules.
type Set struct {
	// ConfigMediaType retypes octet-stream image configs. It reads the
	// manifest and, when the config descriptor is suspect, the config.
	ConfigMediaType bool
	// SymlinkXattrs repackages layers with xattrs on symlinks and other
	// special files. It reads every layer.
	SymlinkXattrs bool
	// ZstdMediaType retypes layers of Docker's zstd type as OCI zstd
	// layers; the blobs stay. It reads the manifest only.
	ZstdMediaType bool
	// Schema1 converts schema 1 manifests to Docker schema 2. It reads
	// every layer (for its diff ID).
	Schema1 bool
	// ZstdGzip recompresses zstd layers with gzip. It reads every zstd
	// layer.
	ZstdGzip bool
	// IndexSizes gives an index entry the size of the child it names, as
	// fetched and verified by digest. It reads the children an index's
	// normalization reads anyway (those of normalize.platforms).
	IndexSizes bool
	// LayerMediaType types a layer declared as OCI's plain tar by the
	// compression its blob has (gzip, zstd); the blob stays. It reads
	// every layer of that type, verified whole before the type counts.
	LayerMediaType bool
	// DiffIDs gives the config the diff IDs of the layers the manifest
	// lists, where they are wrong or missing. It reads the config of every
	// image manifest, and a layer only when the config makes its diff ID
	// suspect (or another rule of the set reads it anyway).
	DiffIDs bool
	// GNUSparse repackages layers with GNU sparse entries (tar -S,
	// typeflag 'S') as regular files, holes filled. It reads every layer
	// (the symlink rule's scan counts them in the same pass). Opt-in.
	GNUSparse bool
}

// All is every rule.
func All() Set {
	var s Set
	for _, r := range rules {
		*r.in(&s) = true
	}
	return s
}

// Default is the rules on unless the operator says otherwise: every rule
// but the opt-in ones.
func Default() Set {
	var s Set
	for _, r := range rules {
		*r.in(&s) = !r.optIn
	}
	return s
}

// Parse reads a list of rule names.
func Parse(names []string) (Set, error) {
	var s Set
	for _, n := range names {
		i := slices.IndexFunc(rules, func(r rule) bool { return r.name == n })
		if i < 0 {
			return Set{}, fmt.Errorf("unknown rule %q (known: %s)", n, strings.Join(Names(), ", "))
		}
		*rules[i].in(&s) = true
	}
	return s, nil
}

// Key names the rules of s, comma-separated in a fixed order; "" for none.
// Verdicts, variants and report entries are kept per key.
func (s Set) Key() string { return strings.Join(s.names(), ",") }

func (s Set) names() []string {
	var on []string
	for _, r := range rules {
		if *r.in(&s) {
			on = append(on, r.name)
		}
	}
	return on
}

// Empty reports whether s holds no rule: its client gets every original.
func (s Set) Empty() bool { return s == Set{} }

// Intersect is the rules in both s and o.
func (s Set) Intersect(o Set) Set {
	var both Set
	for _, r := range rules {
		*r.in(&both) = *r.in(&s) && *r.in(&o)
	}
	return both
}

// Union is the rules in s or o: the variant a fleet of several versions can
// all run (what the admission webhook makes) has the rules of each.
func (s Set) Union(o Set) Set {
	var either Set
	for _, r := range rules {
		*r.in(&either) = *r.in(&s) || *r.in(&o)
	}
	return either
}

// Needs is the rules a containerd version needs (docs/containerd.md):
//
//	config media type   1.4 and every version since: CRI never fetches the
//	                    layers of an image whose config is octet-stream
//	symlink xattrs      before 1.5.14 and 1.6.0 – 1.6.8: unpacking fails
//	                    with EPERM
//	zstd media type     1.5 – 1.7: they unpack OCI zstd layers, not
//	                    Docker's zstd type ("no processor for media-type")
//	schema 1            2.0 and later: 2.0 refuses schema 1 by default,
//	                    2.1 removed it (1.x converts it itself)
//	zstd to gzip        before 1.5: zstd layers are read as plain tar
//	                    ("archive/tar: invalid tar header")
//	index sizes         every version: a child fetched through an index
//	                    entry of the wrong size fails
//	                    ("failed size validation")
//	layer media type    every version: a compressed layer typed as OCI's
//	                    plain tar is read as tar (Docker's plain type is
//	                    sniffed, OCI's is not: "archive/tar: invalid tar
//	                    header")
//	diff IDs            every version: a layer whose diff ID the config
//	                    does not list rightly fails ("wrong diff id
//	                    calculated on extraction", "number of layers and
//	                    diffIDs don't match")
//	GNU sparse          every version: archive/tar.go handles no typeflag
//	                    'S' ("unhandled tar header type 83"; checked in
//	                    1.6.8, 1.7.16 and 2.4.2's source, seen on 1.6.20,
//	                    1.6.8 and 2.3.4)
func Needs(v containerdcfg.Version) Set {
	before := func(major, minor, patch int) bool {
		if v.Major != major {
			return v.Major < major
		}
		if v.Minor != minor {
			return v.Minor < minor
		}
		return v.Patch < patch
	}
	return Set{
		ConfigMediaType: !before(1, 4, 0),
		SymlinkXattrs:   before(1, 5, 14) || (v.Major == 1 && v.Minor == 6 && v.Patch < 9),
		ZstdMediaType:   !before(1, 5, 0) && before(2, 0, 0),
		Schema1:         !before(2, 0, 0),
		ZstdGzip:        before(1, 5, 0),
		IndexSizes:      true,
		LayerMediaType:  true,
		DiffIDs:         true,
		GNUSparse:       true,
	}
}

// Minors are the containerd minor versions released when these rules were
// written, each of which Needs was checked against (CONTAINERD.md): the
// versions regnorm knows by name. A later one gets the rules of the
// newest, but is not named here until it has been checked.
func Minors() []string {
	return []string{"1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "2.0", "2.1", "2.2", "2.3"}
}

var containerdUserAgent = regexp.MustCompile(`containerd/v?(\d+\.\d+\.\d+)`)

// Containerd is the containerd version a User-Agent names, if any.
func Containerd(userAgent string) (containerdcfg.Version, bool) {
	m := containerdUserAgent.FindStringSubmatch(userAgent)
	if m == nil {
		return containerdcfg.Version{}, false
	}
	return containerdcfg.ParseVersion(m[1]), true
}

// Policy maps clients to rule sets.
type Policy struct {
	// Enabled is every rule the operator switched on: no client gets more.
	Enabled Set
	// AllClients gives every client every enabled rule, whatever it needs
	// (normalize.clients: all).
	AllClients bool
	// Unknown is what a client gets whose User-Agent names no containerd
	// version, within Enabled.
	Unknown Set
}

// DefaultPolicy is the Default rules on, for the clients that need them;
// clients that name no containerd version get every rule that is on.
func DefaultPolicy() Policy { return Policy{Enabled: Default(), Unknown: All()} }

// Client is what a policy decided for one client.
type Client struct {
	// Version is the containerd version ("1.6.20"), or "" when the
	// User-Agent names none.
	Version string
	// Rules is the client's rule set.
	Rules Set
}

// ForUserAgent is the rule set of the client that sent userAgent.
func (p Policy) ForUserAgent(userAgent string) Client {
	v, ok := Containerd(userAgent)
	if !ok {
		return Client{Rules: p.forUnknown()}
	}
	return p.ForVersion(v)
}

// ForVersion is the rule set of a containerd version.
func (p Policy) ForVersion(v containerdcfg.Version) Client {
	if !v.Known {
		return Client{Rules: p.forUnknown()}
	}
	c := Client{Version: fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch), Rules: p.Enabled}
	if !p.AllClients {
		c.Rules = p.Enabled.Intersect(Needs(v))
	}
	return c
}

func (p Policy) forUnknown() Set {
	if p.AllClients {
		return p.Enabled
	}
	return p.Enabled.Intersect(p.Unknown)
}
