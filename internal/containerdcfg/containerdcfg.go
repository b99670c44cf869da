// Package containerdcfg reads a node's containerd configuration as
// containerd does, and says whether containerd will read the hosts.toml
// files in a directory: the mirror configuration regnorm's node-config
// writes. If not, it says why (as codes of a fixed set, which Explain puts
// in words: reasons.go), what to change where, given the files as they are
// (where.go: set the config_path line a file has, or add the table where
// there is none), and can make a drop-in that fixes it where the
// configuration imports drop-ins.
//
// The facts it encodes are containerd's (docs/containerd.md): 1.x reads
// hosts.toml only with registry.config_path set; from 2.1, CRI pulls go
// through the transfer service, which reads config_path as one directory,
// so the list that 2.2+ uses by default
// ("/etc/containerd/certs.d:/etc/docker/certs.d") means no hosts.toml is
// read; legacy registry.mirrors replace hosts.toml altogether, and
// containerd refuses them beside config_path (1.x a configs."<host>".tls
// table too), so advice deletes them first (legacy.go).
//
// It reads files and writes none itself; it imports no HTTP and no other
// package of regnorm's.
package containerdcfg

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is a containerd configuration: the main file and its imports, in
// containerd's order. How they merge depends on the containerd version
// (Plugins).
type Config struct {
	// Path is the main file, which may not exist.
	Path string
	// Version is the main file's version (1 or absent: 1; 2; 3).
	Version int
	// Files are the files read, main file first.
	Files []string
	// Imports are the main file's import patterns, made absolute.
	Imports []string
	// layers are each file's version and plugin settings, in Files' order.
	layers []layer
}

// layer is one file of a configuration.
type layer struct {
	version int // as the file says; 0 when it says none
	plugins map[string]map[string]any
	raw     []byte // the file's text, for the lines advice quotes
}

// DropInName is the name of the drop-in DropIn makes: last in the
// directory's order, so that it wins.
const DropInName = "99-regnorm.toml"

// Without returns the configuration as it is without one of its files.
func (c *Config) Without(file string) *Config {
	out := &Config{Path: c.Path, Version: c.Version, Imports: c.Imports}
	for i, f := range c.Files {
		if f != file {
			out.Files = append(out.Files, f)
			out.layers = append(out.layers, c.layers[i])
		}
	}
	return out
}

// Plugins merges the files' plugin settings as containerd v does.
//
// 1.x replaces a whole plugin section with a later file's. 2.x first
// migrates each file whose version is below its own config version (3
// before 2.3, 4 since): a version 1 file's short plugin names get their
// full ones, and the CRI plugin's image settings (the registry among
// them) are copied into the images plugin's section, replacing its keys.
// Then it merges the files key by key, a later file's value winning.
func (c *Config) Plugins(v Version) map[string]map[string]any {
	out := map[string]map[string]any{}
	if v.Major < 2 {
		for _, l := range c.layers {
			for name, settings := range l.plugins {
				out[name] = deepCopy(settings)
			}
		}
		return out
	}
	target := 3
	if v.atLeast(2, 3) {
		target = 4
	}
	for _, l := range c.layers {
		plugins := map[string]map[string]any{}
		for name, settings := range l.plugins {
			if l.version <= 1 && name == criV1 {
				name = criV2
			}
			plugins[name] = deepCopy(settings)
		}
		if max(l.version, 1) < target {
			migrateImages(plugins)
		}
		for name, settings := range plugins {
			if out[name] == nil {
				out[name] = settings
			} else {
				out[name] = deepMerge(out[name], settings)
			}
		}
	}
	return out
}

// migrateImages copies a file's CRI image settings into the images
// plugin's section, as containerd 2.x's images plugin migrates them.
func migrateImages(plugins map[string]map[string]any) {
	src := plugins[criV2]
	if src == nil {
		return
	}
	dst := plugins[imagesV3]
	if dst == nil {
		dst = map[string]any{}
	}
	if sandbox, ok := src["sandbox_image"]; ok {
		pinned := anyMap(dst["pinned_images"])
		if pinned == nil {
			pinned = map[string]any{}
		}
		pinned["sandbox"] = sandbox
		dst["pinned_images"] = pinned
	}
	for _, key := range []string{"registry", "image_decryption", "max_concurrent_downloads", "image_pull_progress_timeout", "image_pull_with_sync_fs", "stats_collect_period"} {
		if val, ok := src[key]; ok {
			dst[key] = val
		}
	}
	runtime := anyMap(src["containerd"])
	for _, key := range []string{"snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"} {
		if val, ok := runtime[key]; ok {
			dst[key] = val
		}
	}
	plugins[imagesV3] = dst
}

// effectiveVersion is the version 1.x reads plugin names by: the last file
// that sets one wins (its merge overrides the main file's).
func (c *Config) effectiveVersion() int {
	version := 1
	for _, l := range c.layers {
		if l.version > 0 {
			version = l.version
		}
	}
	return version
}

// deepMerge returns dst with src's keys set over it, tables merged.
func deepMerge(dst, src map[string]any) map[string]any {
	out := deepCopy(dst)
	for k, v := range src {
		if sub, ok := v.(map[string]any); ok {
			if have, ok := out[k].(map[string]any); ok {
				out[k] = deepMerge(have, sub)
				continue
			}
			out[k] = deepCopy(sub)
			continue
		}
		out[k] = v
	}
	return out
}

// Load reads the configuration at path and the files it imports. A missing
// main file is a configuration of nothing: containerd's defaults.
func Load(path string) (*Config, error) {
	cfg := &Config{Path: path, Version: 1}
	loaded := map[string]bool{}
	pending := []string{path}
	for len(pending) > 0 {
		p := pending[0]
		pending = pending[1:]
		if loaded[p] {
			continue
		}
		loaded[p] = true
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) && p == path {
			return cfg, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read containerd config: %w", err)
		}
		file, err := parseFile(b)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", p, err)
		}
		cfg.Files = append(cfg.Files, p)
		if p == path && file.Version > 0 {
			cfg.Version = file.Version
		}
		cfg.layers = append(cfg.layers, layer{version: file.Version, plugins: file.Plugins, raw: b})
		for _, imp := range file.Imports {
			imp = filepath.Clean(imp)
			if !filepath.IsAbs(imp) {
				imp = filepath.Join(filepath.Dir(p), imp)
			}
			if p == path {
				cfg.Imports = append(cfg.Imports, imp)
			}
			if strings.Contains(imp, "*") {
				matches, err := filepath.Glob(imp)
				if err != nil {
					return nil, fmt.Errorf("import %s: %w", imp, err)
				}
				pending = append(pending, matches...)
			} else {
				pending = append(pending, imp)
			}
		}
	}
	return cfg, nil
}

// configFile is what a configuration file says that Load reads.
type configFile struct {
	Version int                       `toml:"version"`
	Imports []string                  `toml:"imports"`
	Plugins map[string]map[string]any `toml:"plugins"`
}

func parseFile(b []byte) (configFile, error) {
	var file configFile
	_, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&file)
	return file, err
}

// Plugin names of the sections that hold registry settings.
const (
	criV1     = "cri"                         // a version 1 file's short name
	criV2     = "io.containerd.grpc.v1.cri"   // 1.x, and a version 2 file on 2.x
	imagesV3  = "io.containerd.cri.v1.images" // 2.x, version 3 files
	defaultV2 = "/etc/containerd/certs.d:/etc/docker/certs.d"
)

// Version is a containerd version, from its version API or a User-Agent.
type Version struct {
	Major, Minor, Patch int
	Known               bool
	Text                string
}

var versionRe = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)`)

// ParseVersion reads "v2.3.4", "1.6.20~ds1" or "containerd/1.7.2".
func ParseVersion(s string) Version {
	m := versionRe.FindStringSubmatch(s)
	if m == nil {
		return Version{Text: s}
	}
	v := Version{Known: true, Text: s}
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	return v
}

func (v Version) atLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// Verdict is whether containerd reads the hosts.toml files in a directory.
type Verdict struct {
	// Reads is true when containerd, as configured, reads them.
	Reads bool `json:"reads"`
	// ConfigPath is the config_path containerd uses, its default included.
	ConfigPath string `json:"configPath"`
	// TransferService is true when CRI pulls go through containerd 2.1+'s
	// transfer service, which reads config_path as one directory.
	TransferService bool `json:"transferService"`
	// Reasons say why not (one of Check's codes), and what was assumed
	// (VersionAssumed); Explain puts them in words.
	Reasons []Reason `json:"reasons,omitempty"`
	// Where is where the setting that fixes it goes, in the configuration
	// as it is.
	Where Where `json:"-"`
	// Fix is what to do, with the exact lines (Where's Advice), when
	// containerd does not read them.
	Fix string `json:"fix,omitempty"`
}

// registry returns the registry settings and the plugin section they are
// in, for this version: on 2.x, after migration, always the images
// plugin's; on 1.x the CRI plugin's, under the name the effective version
// reads.
func (c *Config) registry(v Version) (section string, settings map[string]any, reg map[string]any) {
	plugins := c.Plugins(v)
	switch {
	case v.Major >= 2:
		section = imagesV3
	case c.effectiveVersion() <= 1:
		section = criV1
	default:
		section = criV2
	}
	settings = plugins[section]
	reg, _ = settings["registry"].(map[string]any)
	return section, settings, reg
}

// assume is the version to judge by when containerd did not say: 2.3 for
// a configuration of version 3 or more, else 1.7; and, then, the reason
// that says so.
func (c *Config) assume(v Version) (Version, []Reason) {
	if v.Known {
		return v, nil
	}
	guess := Version{Major: 1, Minor: 7, Known: true}
	if c.Version >= 3 {
		guess = Version{Major: 2, Minor: 3, Known: true}
	}
	return guess, []Reason{{Code: VersionAssumed, Major: guess.Major, Minor: guess.Minor, ConfigVersion: c.Version}}
}

// Check says whether containerd v, with this configuration, reads the
// hosts.toml files under dir.
func Check(c *Config, v Version, dir string) Verdict {
	v, assumed := c.assume(v)
	verdict := c.check(v, filepath.Clean(dir))
	verdict.Reasons = append(assumed, verdict.Reasons...)
	return verdict
}

// check is Check with v known.
func (c *Config) check(v Version, dir string) Verdict {
	section, settings, reg := c.registry(v)
	written, set := reg["config_path"]
	configPath, _ := written.(string)
	where := c.where(v)
	fix := where.Advice(dir)
	if legacy := c.legacy(v); legacy.mirrors || legacy.tls {
		// containerd refuses them beside config_path: the advice takes
		// them out first, then sets config_path if it must; or, where
		// no line can take them out, gives no lines.
		verdict := Verdict{ConfigPath: configPath, Where: where}
		byHand := legacy.cleaned == nil
		if !byHand {
			// Deleting them may bring out others: on 1.x an earlier
			// file's CRI section, on 2.x a file's own images section
			// that its CRI registry replaced. Those are for a person.
			again := legacy.cleaned.legacy(v)
			byHand = again.mirrors || again.tls
		}
		if legacy.mirrors {
			verdict.Reasons = append(verdict.Reasons, Reason{Code: LegacyMirrors, Section: section, Table: where.Table, ByHand: byHand})
		}
		if legacy.tls {
			verdict.Reasons = append(verdict.Reasons, Reason{Code: LegacyConfigsTLS, Major: v.Major, Minor: v.Minor, Section: section, Table: where.Table, ByHand: byHand})
		}
		if !byHand {
			steps := legacy.steps
			if after := legacy.cleaned.check(v, dir); !after.Reads {
				steps = append(steps, after.Fix)
			}
			verdict.Fix = numbered(steps)
		}
		return verdict
	}
	// An explicit config_path = "" is said as the file says it: it is
	// not "not set", though containerd takes it so.
	empty := set && configPath == ""
	list := ConfigPathList
	if configPath == "" && v.atLeast(2, 2) {
		configPath = defaultV2
		list = DefaultConfigPathList
	}
	verdict := Verdict{ConfigPath: configPath}
	local := v.Major < 2 || (v.Major == 2 && v.Minor == 0) || localPull(settings)
	verdict.TransferService = !local
	var why Reason
	switch {
	case configPath == "":
		why = Reason{Code: NoConfigPath, Major: v.Major, Minor: v.Minor, Empty: empty}
	case local && slices.Contains(splitPath(configPath), dir):
		verdict.Reads = true
	case !local && filepath.Clean(configPath) == dir:
		verdict.Reads = true
	case !local && len(splitPath(configPath)) > 1:
		why = Reason{Code: list, Major: v.Major, Minor: v.Minor}
	default:
		why = Reason{Code: OtherConfigPath}
	}
	if list == DefaultConfigPathList && why.Code == list {
		why.Empty = empty
	}
	if !verdict.Reads {
		why.Table = where.Table
		verdict.Reasons, verdict.Where, verdict.Fix = append(verdict.Reasons, why), where, fix
	}
	return verdict
}

// localPull reports whether 2.x settings force CRI onto the local pull
// path instead of the transfer service (containerd's
// CheckLocalImagePullConfigs).
func localPull(settings map[string]any) bool {
	if b, _ := settings["use_local_image_pull"].(bool); b {
		return true
	}
	for _, key := range []string{"discard_unpacked_layers", "image_pull_with_sync_fs"} {
		if b, _ := settings[key].(bool); b {
			return true
		}
	}
	if n, ok := settings["max_concurrent_downloads"].(int64); ok && n != 3 {
		return true
	}
	if b, ok := settings["disable_snapshot_annotations"].(bool); ok && !b {
		return true
	}
	reg, _ := settings["registry"].(map[string]any)
	for _, key := range []string{"mirrors", "configs", "auths"} {
		if len(anyMap(reg[key])) > 0 {
			return true
		}
	}
	return false
}

func anyMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func splitPath(p string) []string {
	var out []string
	for _, d := range strings.Split(p, ":") {
		if d != "" {
			out = append(out, filepath.Clean(d))
		}
	}
	return out
}

// PluginsVersion is the configuration version whose plugin names containerd
// v reads this configuration by, and a fix must use: on 1.x the version of
// the last file that sets one (a drop-in's may differ from the main
// file's); on 2.x the main file's, which 2.x migrates.
func (c *Config) PluginsVersion(v Version) int {
	if v, _ = c.assume(v); v.Major < 2 {
		return c.effectiveVersion()
	}
	return c.Version
}

// FixFor is the registry table that sets config_path to dir, with the
// plugin names of configVersion (PluginsVersion): the lines to add to a
// configuration that has no such table. Where the table may be there
// already (`containerd config default` writes it), it is no advice: use
// Check's Fix, or FixForReport.
func FixFor(configVersion int, dir string) string {
	return fmt.Sprintf("%s\n  config_path = %s", tableFor(configVersion), quote(configVersion, dir))
}

// DropInMarker starts every drop-in DropIn makes: node-config knows its own
// file by it.
const DropInMarker = "# Written by regnorm node-config"

// DropIn makes a file that fixes the configuration where it imports
// drop-ins: config_path set to dir alone, for 2.x in a version 3 file's
// images section (merged over the main file's, migrated or not), for 1.x in
// the CRI section of the version it reads. It returns where to write it,
// or, as a *Refusal, why a drop-in cannot fix it and a person must:
//   - legacy registry settings (mirrors, configs, auths), which may hold
//     credentials that must move to hosts.toml (LegacySettings);
//   - the configuration imports no drop-ins (NoDropInDir);
//   - containerd's version is unknown (VersionUnknown);
//   - a version 1 configuration, whose plugins have other names
//     (ConfigVersion1);
//   - containerd 1.x with CRI settings of its own: 1.x replaces a plugin
//     section whole with an imported file's, so a drop-in would have to
//     freeze a copy of them that later edits of the main file would not
//     reach (SectionReplaced). (2.x merges sections key by key.)
func DropIn(c *Config, v Version, dir string) (path string, content []byte, err error) {
	// Legacy settings first: they are what a person must deal with, with
	// or without a drop-in directory.
	assumed, _ := c.assume(v)
	_, _, legacy := c.registry(assumed)
	for _, key := range LegacyKeys {
		if len(anyMap(legacy[key])) > 0 {
			return "", nil, &Refusal{Reason{Code: LegacySettings, Key: key}}
		}
	}
	var target string
	for _, imp := range c.Imports {
		if d, pattern := filepath.Split(imp); pattern == "*.toml" {
			target = filepath.Join(d, DropInName)
			break
		}
	}
	if target == "" {
		return "", nil, &Refusal{Reason{Code: NoDropInDir}}
	}
	if !v.Known {
		return "", nil, &Refusal{Reason{Code: VersionUnknown}}
	}
	if c.Version <= 1 || (v.Major < 2 && c.effectiveVersion() <= 1) {
		return "", nil, &Refusal{Reason{Code: ConfigVersion1}}
	}
	section, settings, _ := c.registry(v)
	version := 3
	if v.Major < 2 {
		version = c.effectiveVersion()
		for key, value := range settings {
			if key != "registry" || len(anyMap(value)) > 1 || (len(anyMap(value)) == 1 && anyMap(value)["config_path"] == nil) {
				return "", nil, &Refusal{Reason{Code: SectionReplaced, Major: v.Major, Minor: v.Minor, Section: section}}
			}
		}
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%s: config_path for containerd's CRI registry, so that it reads\n", DropInMarker)
	// The directory as a TOML string even in the comment: a path written
	// as it is could end the comment, or hold a character containerd
	// refuses there.
	fmt.Fprintf(&buf, "# the hosts.toml files in %s (one directory). node-config leaves it in place when it stops.\n", String(dir))
	doc := map[string]any{"version": version, "plugins": map[string]any{section: map[string]any{"registry": map[string]any{"config_path": filepath.Clean(dir)}}}}
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		return target, nil, err
	}
	return target, buf.Bytes(), nil
}

func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			out[k] = deepCopy(sub)
		} else {
			out[k] = v
		}
	}
	return out
}
