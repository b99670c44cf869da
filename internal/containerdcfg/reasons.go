package containerdcfg

import (
	"fmt"
	"slices"
	"strings"
)

// A Code names one of the things node-config can find about a node. A
// report carries codes and the few values they need, never text: whoever
// shows a report (node-config in its log and status file, regnorm in its
// fleet view) makes the words with Explain. So what an operator reads
// about a node is regnorm's own text, whoever sent the report; a value
// from a report is shown quoted, as what the node has, never as what to do.
type Code string

// The verdicts of Check.
const (
	// VersionAssumed: containerd did not say its version; Major.Minor was
	// assumed from the main file's ConfigVersion.
	VersionAssumed Code = "version-assumed"
	// LegacyMirrors: registry.mirrors in Section replace hosts.toml, and
	// containerd refuses them beside config_path (ByHand: no line can be
	// quoted to take them out).
	LegacyMirrors Code = "legacy-mirrors"
	// LegacyConfigsTLS: a registry.configs."<host>".tls table in Section,
	// which containerd Major.Minor (1.x) refuses beside config_path
	// (ByHand: no line can be quoted to take it out). 2.x ignores it.
	LegacyConfigsTLS Code = "legacy-configs-tls"
	// NoConfigPath: containerd Major.Minor has no config_path (Empty: the
	// configuration says config_path = "").
	NoConfigPath Code = "no-config-path"
	// ConfigPathList: config_path is a list (the node's, reported apart),
	// which containerd Major.Minor's transfer service reads as one
	// directory.
	ConfigPathList Code = "config-path-list"
	// DefaultConfigPathList: config_path is not set (Empty: it is ""),
	// and containerd Major.Minor's default is such a list.
	DefaultConfigPathList Code = "default-config-path-list"
	// OtherConfigPath: config_path (the node's, reported apart) is not
	// the directory node-config writes to.
	OtherConfigPath Code = "other-config-path"
)

// Why DropIn cannot fix a configuration, and a person must.
const (
	// NoDropInDir: the configuration imports no directory of drop-ins.
	NoDropInDir Code = "no-drop-in-dir"
	// VersionUnknown: containerd did not say its version.
	VersionUnknown Code = "version-unknown"
	// ConfigVersion1: the configuration is version 1.
	ConfigVersion1 Code = "config-version-1"
	// LegacySettings: the registry settings have legacy Key (mirrors,
	// configs or auths), which may hold credentials.
	LegacySettings Code = "legacy-settings"
	// SectionReplaced: containerd Major.Minor replaces Section whole with
	// an imported file's, and the configuration sets more in it.
	SectionReplaced Code = "section-replaced"
)

// What node-config found, or did, about its drop-in.
const (
	// ConfigUnreadable: containerd's configuration could not be read.
	ConfigUnreadable Code = "config-unreadable"
	// FixRefused: --fix cannot fix it, for Why (a DropIn code).
	FixRefused Code = "fix-refused"
	// FixForeignFile: Path holds a file node-config did not write.
	FixForeignFile Code = "fix-foreign-file"
	// FixWriteFailed: writing the drop-in at Path failed.
	FixWriteFailed Code = "fix-write-failed"
	// DropInWritten: the drop-in at Path fixes it once containerd
	// restarts.
	DropInWritten Code = "drop-in-written"
	// DropInUnsafe: node-config's drop-in at Path, which containerd
	// loaded, is no longer a safe fix, for Why (a DropIn code).
	DropInUnsafe Code = "drop-in-unsafe"
	// DropInNoFix: the drop-in at Path would not fix it, for Why (a Check
	// code).
	DropInNoFix Code = "drop-in-no-fix"
)

// A Reason is one thing node-config found: a Code and the values its
// text needs, each from a small set or a number, or a path regnorm checks.
type Reason struct {
	Code Code `json:"code"`
	// Why explains a FixRefused, DropInUnsafe or DropInNoFix.
	Why Code `json:"why,omitempty"`
	// Major and Minor are the containerd version a verdict is about.
	Major int `json:"major,omitempty"`
	Minor int `json:"minor,omitempty"`
	// ConfigVersion is the version of containerd's main configuration
	// file (VersionAssumed).
	ConfigVersion int `json:"configVersion,omitempty"`
	// Section is the plugin section named: one of Sections.
	Section string `json:"section,omitempty"`
	// Key is a legacy registry setting: one of LegacyKeys.
	Key string `json:"key,omitempty"`
	// Path is the drop-in the reason is about: a file named DropInName.
	Path string `json:"path,omitempty"`
	// Empty is true when the configuration says config_path = "" (a
	// NoConfigPath or DefaultConfigPathList): it is there, and empty.
	Empty bool `json:"empty,omitempty"`
	// Table is true, on a verdict of Check, when the file to fix has the
	// registry table already: config_path goes in it, and a second table
	// would make containerd refuse the file.
	Table bool `json:"table,omitempty"`
	// ByHand is true, on a LegacyMirrors or LegacyConfigsTLS, when
	// node-config cannot quote lines that take them all out (an inline
	// table or a dotted key holds them with other settings, or deleting
	// them brings out more from another file): it gives no lines to
	// follow.
	ByHand bool `json:"byHand,omitempty"`
	// Detail is what only node-config shows, in its own log and status
	// file (an error's text): never part of a report.
	Detail string `json:"-"`
}

// Sections are the plugin sections that hold registry settings.
var Sections = []string{criV1, criV2, imagesV3}

// LegacyKeys are the legacy registry settings that hosts.toml replaces.
var LegacyKeys = []string{"mirrors", "configs", "auths"}

// values a reason's text uses, besides its code.
type values uint8

const (
	version values = 1 << iota // Major, Minor
	configVersion
	section
	key
	path
	empty
	table
	byHand
)

type reasonKind struct {
	uses values
	// why is the codes that may explain it; none for a reason that takes
	// no Why.
	why []Code
	// text is the reason in words; why the words of its Why, configPath
	// and dir what Explain was given.
	text func(r Reason, why, configPath, dir string) string
}

var (
	checkCodes  = []Code{LegacyMirrors, LegacyConfigsTLS, NoConfigPath, ConfigPathList, DefaultConfigPathList, OtherConfigPath}
	dropInCodes = []Code{NoDropInDir, VersionUnknown, ConfigVersion1, LegacySettings, SectionReplaced}
)

var reasonKinds = map[Code]reasonKind{
	VersionAssumed: {uses: version | configVersion, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("containerd's version is unknown (its socket did not answer): assuming %d.%d from the configuration's version %d", r.Major, r.Minor, r.ConfigVersion)
	}},
	LegacyMirrors: {uses: section | table | byHand, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("the legacy registry.mirrors in [plugins.%q.registry] replace hosts.toml, and containerd refuses them beside config_path (\"`mirrors` cannot be set when `config_path` is provided\"): move what they set to hosts.toml files (node-config writes those of the registries regnorm mirrors), delete them, then set config_path%s", r.Section, byHandText(r))
	}},
	LegacyConfigsTLS: {uses: version | section | table | byHand, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("the legacy TLS settings of registry.configs in [plugins.%q.registry] (a configs.\"<host>\".tls table): containerd %d.%d refuses them beside config_path (\"`configs.tls` cannot be set when `config_path` is provided\"): move them to hosts.toml files (ca, client, skip_verify), delete them, then set config_path%s", r.Section, r.Major, r.Minor, byHandText(r))
	}},
	NoConfigPath: {uses: version | empty | table, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("%s: containerd %d.%d reads no hosts.toml", notSet(r), r.Major, r.Minor)
	}},
	ConfigPathList: {uses: version | table, text: func(r Reason, _, configPath, _ string) string {
		return fmt.Sprintf("config_path is the list %q: containerd %d.%d pulls through the transfer service, which reads it as one directory, so no hosts.toml is read", configPath, r.Major, r.Minor)
	}},
	DefaultConfigPathList: {uses: version | empty | table, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("%s, so containerd %d.%d uses its default, the list %q: containerd %d.%d pulls through the transfer service, which reads it as one directory, so no hosts.toml is read", notSet(r), r.Major, r.Minor, defaultV2, r.Major, r.Minor)
	}},
	OtherConfigPath: {uses: table, text: func(_ Reason, _, configPath, dir string) string {
		return fmt.Sprintf("config_path is %q, not %q: containerd reads none of the hosts.toml files node-config writes", configPath, dir)
	}},

	NoDropInDir: {text: func(Reason, string, string, string) string {
		return `the configuration imports no drop-in directory (an imports entry such as "/etc/containerd/conf.d/*.toml"): add the lines to the main file and restart containerd`
	}},
	VersionUnknown: {text: func(Reason, string, string, string) string {
		return "containerd's version is unknown (its socket did not answer): the drop-in depends on it"
	}},
	ConfigVersion1: {text: func(Reason, string, string, string) string {
		return "the configuration is version 1: add the lines to it, or migrate it (containerd config migrate)"
	}},
	LegacySettings: {uses: key, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("the registry settings have legacy %s: move them to hosts.toml files by hand (they may hold credentials), then set config_path", r.Key)
	}},
	SectionReplaced: {uses: version | section, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("containerd %d.%d replaces [plugins.%q] whole with an imported file's, and the configuration sets more in it: a drop-in would freeze a copy of those settings; add the lines to the main file", r.Major, r.Minor, r.Section)
	}},

	ConfigUnreadable: {text: func(Reason, string, string, string) string {
		return "node-config cannot read containerd's configuration (its log says why)"
	}},
	FixRefused: {why: dropInCodes, text: func(_ Reason, why, _, _ string) string {
		return "--fix cannot: " + why
	}},
	FixForeignFile: {uses: path, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("--fix leaves %q alone: it was not written by regnorm", r.Path)
	}},
	FixWriteFailed: {uses: path, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("--fix could not write %q (node-config's log says why)", r.Path)
	}},
	DropInWritten: {uses: path, text: func(r Reason, _, _, _ string) string {
		return fmt.Sprintf("a drop-in fixing it is written to %q: restart containerd to apply it (systemctl restart containerd)", r.Path)
	}},
	DropInUnsafe: {uses: path, why: dropInCodes, text: func(r Reason, why, _, _ string) string {
		return fmt.Sprintf("the drop-in %q is no longer a safe fix (%s): delete it, add the lines to the main file, and restart containerd", r.Path, why)
	}},
	DropInNoFix: {uses: path, why: checkCodes, text: func(r Reason, why, _, _ string) string {
		return fmt.Sprintf("the drop-in %q would not fix it: %s", r.Path, why)
	}},
}

// byHandText says why there are no lines to follow, when there are none.
func byHandText(r Reason) string {
	if !r.ByHand {
		return ""
	}
	return "; node-config cannot quote lines that take them all out (an inline table or a dotted key holds them with other settings, or more are behind them in another file), so it gives no lines to follow: edit them out by hand"
}

// notSet is how a configuration without a config_path says so: as it is
// written, when it is.
func notSet(r Reason) string {
	if r.Empty {
		return `config_path is "" (empty)`
	}
	return "config_path is not set"
}

// Explain is reasons in words, for a node whose config_path is configPath
// and whose hosts.toml files node-config writes to dir. A reason that is
// not Valid is left out.
func Explain(reasons []Reason, configPath, dir string) string {
	var parts []string
	for _, r := range reasons {
		if r.Valid() == nil {
			parts = append(parts, r.text(configPath, dir))
		}
	}
	return strings.Join(parts, "; ")
}

func (r Reason) text(configPath, dir string) string {
	k := reasonKinds[r.Code]
	why := ""
	if r.Why != "" {
		w := r
		w.Code, w.Why, w.Detail = r.Why, "", ""
		why = w.text(configPath, dir)
	}
	s := k.text(r, why, configPath, dir)
	if r.Detail != "" {
		s += " (" + r.Detail + ")"
	}
	return s
}

// Valid returns nil when r is a reason node-config makes: a known code,
// the Why that goes with it if any, and no value its text does not use,
// each in its range. A path is checked only for its name (DropInName):
// where it may be is for the caller to say.
func (r Reason) Valid() error {
	k, ok := reasonKinds[r.Code]
	if !ok || slices.Contains(dropInCodes, r.Code) {
		return fmt.Errorf("unknown reason %q", r.Code)
	}
	uses := k.uses
	switch {
	case len(k.why) == 0 && r.Why != "":
		return fmt.Errorf("reason %s takes no why", r.Code)
	case len(k.why) > 0 && !slices.Contains(k.why, r.Why):
		return fmt.Errorf("reason %s has why %q, not one of %v", r.Code, r.Why, k.why)
	case r.Why != "":
		uses |= reasonKinds[r.Why].uses
	}
	for _, v := range []struct {
		name string
		of   values
		set  bool
		ok   bool
	}{
		{"a containerd version", version, r.Major != 0 || r.Minor != 0, r.Major >= 0 && r.Major < 100 && r.Minor >= 0 && r.Minor < 1000},
		{"a configuration version", configVersion, r.ConfigVersion != 0, r.ConfigVersion >= 0 && r.ConfigVersion < 100},
		{"a section", section, r.Section != "", slices.Contains(Sections, r.Section)},
		{"a legacy key", key, r.Key != "", slices.Contains(LegacyKeys, r.Key)},
		{"a path", path, r.Path != "", strings.HasSuffix(r.Path, "/"+DropInName)},
		{"an empty config_path", empty, r.Empty, true},
		{"a registry table", table, r.Table, true},
		{"settings to edit by hand", byHand, r.ByHand, true},
	} {
		switch {
		case uses&v.of == 0 && v.set:
			return fmt.Errorf("reason %s takes no %s", r.Code, v.name)
		case uses&v.of != 0 && !v.ok:
			return fmt.Errorf("reason %s has an invalid %s", r.Code, v.name)
		}
	}
	return nil
}

// A Refusal is why DropIn cannot fix a configuration: one of its codes
// (NoDropInDir, VersionUnknown, ConfigVersion1, LegacySettings,
// SectionReplaced) and its values.
type Refusal struct{ Reason }

func (e *Refusal) Error() string { return reasonKinds[e.Code].text(e.Reason, "", "", "") }
