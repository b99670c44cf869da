package ruleset

import (
	"reflect"
	"strings"
	"testing"

	"github.com/regnorm/regnorm/internal/containerdcfg"
)

// TestNeeds is docs/containerd.md's table of which containerd versions fail
// on what, version by version at each edge.
func TestNeeds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version                      string
		config, xattr, zstd, schema1 bool
		gzip                         bool
	}{
		{"1.3.9", false, true, false, false, true},
		{"1.4.0", true, true, false, false, true},
		{"1.4.13", true, true, false, false, true},
		{"1.5.0", true, true, true, false, false},
		{"1.5.13", true, true, true, false, false},
		{"1.5.14", true, false, true, false, false},
		{"1.5.18", true, false, true, false, false},
		{"1.6.0", true, true, true, false, false},
		{"1.6.8", true, true, true, false, false},
		{"1.6.9", true, false, true, false, false},
		{"1.6.20", true, false, true, false, false},
		{"1.7.0", true, false, true, false, false},
		{"1.7.29", true, false, true, false, false},
		{"2.0.0", true, false, false, true, false},
		{"2.3.4", true, false, false, true, false},
	} {
		got := Needs(containerdcfg.ParseVersion(tc.version))
		// Every version needs the index sizes, layer media type, diff IDs and GNU sparse rules.
		if want := (Set{ConfigMediaType: tc.config, SymlinkXattrs: tc.xattr, ZstdMediaType: tc.zstd, Schema1: tc.schema1, ZstdGzip: tc.gzip,
			IndexSizes: true, LayerMediaType: true, DiffIDs: true, GNUSparse: true}); got != want {
			t.Errorf("Needs(%s) = %+v, want %+v", tc.version, got, want)
		}
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	for17 := Set{ConfigMediaType: true, ZstdMediaType: true, IndexSizes: true, LayerMediaType: true, DiffIDs: true}
	for2 := Set{ConfigMediaType: true, Schema1: true, IndexSizes: true, LayerMediaType: true, DiffIDs: true}
	for2sparse := for2
	for2sparse.GNUSparse = true
	for _, tc := range []struct {
		name      string
		policy    Policy
		userAgent string
		version   string
		want      Set
	}{
		{"old node gets all of 1.x's", DefaultPolicy(), "containerd/1.6.8", "1.6.8", Set{ConfigMediaType: true, SymlinkXattrs: true, ZstdMediaType: true, IndexSizes: true, LayerMediaType: true, DiffIDs: true}},
		{"distro suffix", DefaultPolicy(), "containerd/1.6.20~ds1", "1.6.20", for17},
		{"v prefix", DefaultPolicy(), "containerd/v2.3.4-12-gabc", "2.3.4", for2},
		{"unknown client gets the default", DefaultPolicy(), "go-containerregistry/v0.20", "", Default()},
		{"no User-Agent", DefaultPolicy(), "", "", Default()},
		{"the opt-in rule turned on", Policy{Enabled: All(), Unknown: All()}, "containerd/2.3.4", "2.3.4", for2sparse},
		{"unknown default narrowed", Policy{Enabled: All(), Unknown: Set{}}, "crane", "", Set{}},
		{"unknown default within enabled", Policy{Enabled: Set{ConfigMediaType: true}, Unknown: All()}, "crane", "", Set{ConfigMediaType: true}},
		{"enabled bounds what a node needs", Policy{Enabled: Set{SymlinkXattrs: true}, Unknown: All()}, "containerd/1.6.20", "1.6.20", Set{}},
		{"all clients", Policy{Enabled: All(), AllClients: true}, "containerd/2.3.4", "2.3.4", All()},
		{"2.x needs no zstd retype", DefaultPolicy(), "containerd/2.1.0", "2.1.0", for2},
		{"all clients, unknown too", Policy{Enabled: All(), AllClients: true, Unknown: Set{}}, "crane", "", All()},
		{"pre-1.4 node", DefaultPolicy(), "containerd/1.3.9", "1.3.9", Set{SymlinkXattrs: true, ZstdGzip: true, IndexSizes: true, LayerMediaType: true, DiffIDs: true}},
	} {
		got := tc.policy.ForUserAgent(tc.userAgent)
		if got.Rules != tc.want || got.Version != tc.version {
			t.Errorf("%s: ForUserAgent(%q) = %+v, want rules %+v version %q", tc.name, tc.userAgent, got, tc.want, tc.version)
		}
	}
}

func TestKeyAndParse(t *testing.T) {
	t.Parallel()
	for _, s := range []Set{{}, {ConfigMediaType: true}, {SymlinkXattrs: true}, {ZstdMediaType: true}, {Schema1: true}, {ZstdGzip: true}, {IndexSizes: true}, {LayerMediaType: true}, {DiffIDs: true}, {GNUSparse: true}, All()} {
		var names []string
		if s.Key() != "" {
			names = strings.Split(s.Key(), ",")
		}
		back, err := Parse(names)
		if err != nil || back != s {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", names, back, err, s)
		}
	}
	if All().Key() != "config-media-type,symlink-xattrs,zstd-media-type,schema1,zstd-gzip,index-sizes,layer-media-type,diff-ids,gnu-sparse" {
		t.Errorf("All().Key() = %q", All().Key())
	}
	if _, err := Parse([]string{"symlink-xattr"}); err == nil {
		t.Error("Parse accepted an unknown rule")
	}
}

// TestEveryRuleIsListed: the rules table names every switch of Set once, so
// that All, Parse, Key, Intersect and Union know every rule.
func TestEveryRuleIsListed(t *testing.T) {
	all := reflect.ValueOf(All())
	for i := range all.NumField() {
		if !all.Field(i).Bool() {
			t.Errorf("Set.%s is not in the rules table", all.Type().Field(i).Name)
		}
	}
	if all.NumField() != len(Names()) {
		t.Errorf("%d switches, %d names", all.NumField(), len(Names()))
	}
	for _, n := range Names() {
		s, err := Parse([]string{n})
		if err != nil || s.Key() != n || s.Intersect(All()) != s || s.Intersect(Set{}) != (Set{}) ||
			s.Union(Set{}) != s || s.Union(All()) != All() {
			t.Errorf("rule %s: Parse %+v %v, key %q", n, s, err, s.Key())
		}
	}
}

// TestDefault: every rule is on by default but GNU sparse, whose look at
// every layer would hold up every client's first answer.
func TestDefault(t *testing.T) {
	t.Parallel()
	want := All()
	want.GNUSparse = false
	if got := Default(); got != want {
		t.Errorf("Default() = %+v, want %+v", got, want)
	}
}

// TestUnion: the union of two versions' rule sets holds each rule either
// needs, and no other.
func TestUnion(t *testing.T) {
	t.Parallel()
	old, modern := Needs(containerdcfg.ParseVersion("1.6.8")), Needs(containerdcfg.ParseVersion("2.3.4"))
	got := old.Union(modern)
	if !got.SymlinkXattrs || !got.ZstdMediaType || !got.Schema1 || got.ZstdGzip {
		t.Errorf("1.6.8 ∪ 2.3.4 = %s", got.Key())
	}
	if got.Intersect(old) != old || got.Intersect(modern) != modern {
		t.Errorf("1.6.8 ∪ 2.3.4 = %s holds neither whole", got.Key())
	}
	if (Set{}).Union(Set{}) != (Set{}) {
		t.Error("the union of empty sets is not empty")
	}
}
