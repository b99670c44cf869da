package containerdcfg

import (
	"fmt"
	"slices"
	"strings"
)

// What containerd refuses beside config_path: legacy registry.mirrors
// (1.x and 2.x: "`mirrors` cannot be set when `config_path` is
// provided") and, on 1.x, a registry.configs."<host>".tls table, even an
// empty one ("`configs.tls` cannot be set when `config_path` is
// provided"). Either makes containerd leave its CRI plugin out, so advice
// that sets config_path must first take them out, or give no lines at
// all. 2.x ignores configs' tls (an unknown key, with a warning), and
// both keep configs' auth and auths beside config_path: those stay.

// legacy is what, in a configuration, containerd refuses beside
// config_path, and how to take it out.
type legacy struct {
	mirrors, tls bool
	// steps are advice steps (see Where.Advice) that delete the lines
	// setting them, file by file.
	steps []string
	// cleaned is the configuration with those lines deleted; nil when
	// some are where no line can be quoted for deletion (an inline table
	// or a dotted key that holds other settings too).
	cleaned *Config
}

// legacy finds what containerd v refuses beside config_path in the files
// it takes its registry settings from: on 1.x the last file that has the
// CRI section (it replaces the others'), on 2.x every file (it merges
// them), each in the section it migrates from.
func (c *Config) legacy(v Version) legacy {
	var out legacy
	var files []int
	var sections []string
	if v.Major < 2 {
		section, _, _ := c.registry(v)
		last := -1
		for i, l := range c.layers {
			if l.plugins[section] != nil {
				last = i
			}
		}
		if last >= 0 {
			files, sections = []int{last}, []string{section}
		}
	} else {
		for i, l := range c.layers {
			files, sections = append(files, i), append(sections, l.registrySection(v))
		}
	}
	cleaned := &Config{Path: c.Path, Version: c.Version, Files: c.Files, Imports: c.Imports, layers: slices.Clone(c.layers)}
	for n, i := range files {
		l, section := c.layers[i], sections[n]
		mirrors, tls := l.refused(section, v)
		if !mirrors && !tls {
			continue
		}
		out.mirrors, out.tls = out.mirrors || mirrors, out.tls || tls
		if cleaned == nil {
			continue
		}
		raw, steps := deleteLegacy(c.Files[i], l.raw, []string{"plugins", section, "registry"}, v.Major < 2)
		file, err := parseFile(raw)
		after := layer{version: file.Version, plugins: file.Plugins, raw: raw}
		if m, t := after.refused(section, v); err != nil || m || t || file.Version != l.version {
			cleaned = nil // what is left, no line can take out
			continue
		}
		cleaned.layers[i] = after
		out.steps = append(out.steps, steps...)
	}
	out.cleaned = cleaned
	return out
}

// refused reports whether the file's registry settings in section have
// what containerd v refuses beside config_path.
func (l layer) refused(section string, v Version) (mirrors, tls bool) {
	reg := anyMap(anyMap(l.plugins[section])["registry"])
	mirrors = len(anyMap(reg["mirrors"])) > 0
	if v.Major < 2 {
		for _, host := range anyMap(reg["configs"]) {
			if _, ok := anyMap(host)["tls"]; ok {
				tls = true
			}
		}
	}
	return mirrors, tls
}

// deleteLegacy returns raw without the lines that set mirrors (and, with
// tls, configs' tls tables) under the registry table at reg, and the
// advice steps that delete them: a table of its own (its header and its
// lines), or a key's lines under the table it is in. What it cannot take
// out by whole lines it leaves (the caller checks what is left).
func deleteLegacy(file string, raw []byte, reg []string, tls bool) ([]byte, []string) {
	lines := strings.Split(string(raw), "\n")
	entries := scanTOML(string(raw))
	mirrors := append(slices.Clone(reg), "mirrors")
	kind := func(key []string) string {
		switch {
		case len(key) >= len(mirrors) && slices.Equal(key[:len(mirrors)], mirrors):
			return "mirrors"
		case tls && len(key) >= len(reg)+3 && slices.Equal(key[:len(reg)+1], append(slices.Clone(reg), "configs")) && key[len(reg)+2] == "tls":
			return "tls"
		}
		return ""
	}
	del := make([]string, len(lines)) // the kind of each line deleted
	for k, e := range entries {
		what := kind(e.key)
		if what == "" || del[e.line] != "" {
			continue
		}
		if !e.header {
			for i := e.line; i <= e.last; i++ {
				del[i] = what
			}
			continue
		}
		// The table: its header, to the next header, less what ends it
		// (blank lines, and comments that may be the next table's).
		end, keys := len(lines)-1, false
		for _, next := range entries[k+1:] {
			if next.header {
				end = next.line - 1
				break
			}
			keys = true
		}
		for end > e.line && (strings.TrimSpace(lines[end]) == "" || strings.HasPrefix(strings.TrimSpace(lines[end]), "#")) {
			end--
		}
		if e.array || (len(e.key) == len(mirrors) && !keys) {
			continue // [registry.mirrors] alone sets no mirror
		}
		for i := e.line; i <= end; i++ {
			del[i] = what
		}
	}
	var kept []string
	var steps []string
	for i := 0; i < len(lines); i++ {
		if del[i] == "" {
			kept = append(kept, lines[i])
			continue
		}
		// A run of lines to delete, blank lines between them left.
		var quoted []string
		kinds := map[string]bool{}
		first := i
		for ; i < len(lines); i++ {
			s := strings.TrimSpace(lines[i])
			if del[i] == "" && s != "" {
				break
			}
			if del[i] == "" {
				kept = append(kept, lines[i])
				continue
			}
			if s != "" {
				quoted = append(quoted, s)
			}
			kinds[del[i]] = true
		}
		i--
		if len(quoted) == 0 {
			continue // blank lines of a multi-line value
		}
		var under string
		if !strings.HasPrefix(quoted[0], "[") {
			for _, e := range entries {
				if !e.header && e.line == first {
					under = e.table
				}
			}
			if under != "" {
				under = ", under " + under
			}
		}
		these := "this line"
		if len(quoted) > 1 {
			these = fmt.Sprintf("these %d lines", len(quoted))
		}
		steps = append(steps, fmt.Sprintf("In %s%s, delete %s (%s):\n  %s", file, under, these, legacyWords(kinds), strings.Join(quoted, "\n  ")))
	}
	return []byte(strings.Join(kept, "\n")), steps
}

// legacyWords says what a step deletes.
func legacyWords(kinds map[string]bool) string {
	switch {
	case kinds["mirrors"] && kinds["tls"]:
		return "the legacy registry.mirrors and registry.configs TLS settings, which containerd refuses beside config_path"
	case kinds["tls"]:
		return "the legacy registry.configs TLS settings, which containerd 1.x refuses beside config_path"
	}
	return "the legacy registry.mirrors, which containerd refuses beside config_path"
}

// numbered makes steps one piece of advice: numbered when there are
// several, to be followed in order.
func numbered(steps []string) string {
	if len(steps) == 1 {
		return steps[0]
	}
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = fmt.Sprintf("%d. %s", i+1, s)
	}
	return strings.Join(out, "\n")
}
