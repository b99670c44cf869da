package containerdcfg

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestReasonsAreAFixedSet: every code node-config may send is Valid with
// the values its text uses and makes words without a formatting error;
// codes that only explain another are not reasons of their own; a value a
// code does not use, or one outside its set, makes a reason invalid, and
// Explain leaves it out. A detail (an error's text) is in node-config's
// own words, never in what it sends.
func TestReasonsAreAFixedSet(t *testing.T) {
	t.Parallel()
	const drop = "/etc/containerd/conf.d/" + DropInName
	valid := []Reason{
		{Code: VersionAssumed, Major: 1, Minor: 7, ConfigVersion: 2},
		{Code: LegacyMirrors, Section: criV2},
		{Code: NoConfigPath, Major: 1, Minor: 6},
		{Code: NoConfigPath, Major: 1, Minor: 6, Empty: true, Table: true},
		{Code: ConfigPathList, Major: 2, Minor: 3, Table: true},
		{Code: DefaultConfigPathList, Major: 2, Minor: 3},
		{Code: DefaultConfigPathList, Major: 2, Minor: 3, Empty: true, Table: true},
		{Code: OtherConfigPath, Table: true},
		{Code: LegacyMirrors, Section: imagesV3, Table: true},
		{Code: LegacyMirrors, Section: criV2, ByHand: true},
		{Code: LegacyConfigsTLS, Major: 1, Minor: 6, Section: criV2, Table: true},
		{Code: LegacyConfigsTLS, Major: 1, Minor: 7, Section: criV1, ByHand: true},
		{Code: DropInNoFix, Why: LegacyConfigsTLS, Major: 1, Minor: 6, Section: criV2, Path: drop},
		{Code: ConfigUnreadable},
		{Code: FixRefused, Why: NoDropInDir},
		{Code: FixRefused, Why: VersionUnknown},
		{Code: FixRefused, Why: ConfigVersion1},
		{Code: FixRefused, Why: LegacySettings, Key: "auths"},
		{Code: FixRefused, Why: SectionReplaced, Major: 1, Minor: 6, Section: criV2},
		{Code: FixForeignFile, Path: drop},
		{Code: FixWriteFailed, Path: drop},
		{Code: DropInWritten, Path: drop},
		{Code: DropInUnsafe, Why: SectionReplaced, Major: 1, Minor: 7, Section: criV1, Path: drop},
		{Code: DropInNoFix, Why: ConfigPathList, Major: 2, Minor: 3, Path: drop},
		{Code: DropInNoFix, Why: DefaultConfigPathList, Major: 2, Minor: 3, Empty: true, Table: true, Path: drop},
	}
	seen := map[Code]bool{}
	for _, r := range valid {
		seen[r.Code], seen[r.Why] = true, true
		if err := r.Valid(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
		if got := Explain([]Reason{r}, "/a:/b", "/etc/containerd/certs.d"); got == "" || strings.Contains(got, "%!") {
			t.Errorf("%+v in words: %q", r, got)
		}
	}
	for code := range reasonKinds {
		if !seen[code] {
			t.Errorf("%s is not in this test's table", code)
		}
	}
	for _, r := range []Reason{
		{Code: "restart-containerd"},
		{Code: NoDropInDir},
		{Code: FixRefused},
		{Code: FixRefused, Why: NoConfigPath},
		{Code: NoConfigPath, Why: NoDropInDir},
		{Code: NoConfigPath, Path: drop},
		{Code: OtherConfigPath, Major: 2},
		{Code: LegacyMirrors, Section: "evil"},
		{Code: LegacyMirrors},
		{Code: FixRefused, Why: LegacySettings, Key: "password"},
		{Code: NoConfigPath, Major: -1},
		{Code: VersionAssumed, ConfigVersion: 100},
		{Code: DropInWritten},
		{Code: DropInWritten, Path: "/etc/containerd/conf.d/evil.toml"},
		{Code: OtherConfigPath, Empty: true},
		{Code: ConfigPathList, Major: 2, Minor: 3, Empty: true},
		{Code: DropInWritten, Path: drop, Table: true},
		{Code: FixRefused, Why: NoDropInDir, Table: true},
		{Code: VersionAssumed, Major: 1, Minor: 7, ConfigVersion: 2, Empty: true},
		{Code: NoConfigPath, Major: 1, Minor: 6, ByHand: true},
		{Code: LegacyConfigsTLS, Section: "evil", Major: 1, Minor: 6},
	} {
		if r.Valid() == nil {
			t.Errorf("%+v is valid", r)
		}
		if got := Explain([]Reason{r}, "", ""); got != "" {
			t.Errorf("%+v in words: %q, want nothing", r, got)
		}
	}

	if got := Explain([]Reason{{Code: NoConfigPath, Major: 1, Minor: 6, Empty: true}}, "", ""); got != `config_path is "" (empty): containerd 1.6 reads no hosts.toml` {
		t.Errorf("an empty config_path in words: %q", got)
	}

	r := Reason{Code: ConfigUnreadable, Detail: "open /etc/containerd/config.toml: permission denied"}
	if got := Explain([]Reason{r}, "", ""); !strings.Contains(got, "permission denied") {
		t.Errorf("node-config's own words lack the detail: %q", got)
	}
	if b, _ := json.Marshal(r); strings.Contains(string(b), "permission") {
		t.Errorf("the detail is sent: %s", b)
	}
}
