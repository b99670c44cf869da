package containerdcfg

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Where is where the setting that fixes a configuration goes, given the
// configuration as it is: the file containerd takes its registry settings
// from, and what that file has there already. A table a file has must not
// be written again: containerd refuses the whole file ("table registry
// already exists" on 2.x, "duplicated tables" on 1.6), and `containerd
// config default` writes the registry table, with config_path = "".
type Where struct {
	// File is the file to edit; "" when not known (the fleet view, which
	// knows a node by its report).
	File string
	// Missing is true when File does not exist: containerd runs on its
	// defaults.
	Missing bool
	// ConfigVersion is the version whose plugin names a new table in File
	// is spelled with.
	ConfigVersion int
	// Table is true when File has the registry table, by its header, a
	// dotted key or an inline table: a header for it would be a second one.
	// (A table that only its sub-tables make may get its header later in
	// the file: TOML allows it, and so do containerd 1.6 and 2.3.)
	Table bool
	// Under is the table header (as File writes it) of the table under
	// which Line is, or a line goes; "" for the top of File.
	Under string
	// Line is File's config_path line, as written ("" when it has none).
	Line string
	// More are the further lines of config_path's value, as written, when
	// it spans lines (a multi-line string or array): the line alone is
	// not the setting, and changing it alone would leave them behind.
	More []string
	// Key is config_path's key as it is, or is to be, written under Under:
	// "config_path", or a dotted key such as "registry.config_path" when
	// the registry table is made by dotted keys.
	Key string
}

// quote is dir as a TOML string the way a file of this version writes
// strings (containerd config default writes version 3 files with single
// quotes), where such a string can hold it.
func quote(configVersion int, dir string) string {
	if configVersion >= 3 && literal(dir) {
		return "'" + dir + "'"
	}
	return String(dir)
}

// literal reports whether s can be a TOML literal string ('...'), which
// has no escapes: no quote, no control character but a tab, valid UTF-8.
func literal(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
		return r == '\'' || (r < 0x20 && r != '\t') || r == 0x7f
	})
}

// String is s as a TOML basic string ("..."), which TOML 1.0 readers
// take, as containerd's are: Go's %q is not TOML (it writes "\x01" for a
// control character and "\xff" for a byte of invalid UTF-8, and TOML 1.0
// has no \x escape). Control characters are escaped (\n, \u007F...);
// invalid UTF-8 becomes U+FFFD, so callers that must keep s as it is
// refuse it first.
func String(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// tableFor is the registry table's header in a file of configVersion.
func tableFor(configVersion int) string {
	switch {
	case configVersion <= 1:
		return "[plugins.cri.registry]"
	case configVersion >= 3:
		return "[plugins.'io.containerd.cri.v1.images'.registry]"
	}
	return `[plugins."io.containerd.grpc.v1.cri".registry]`
}

// Advice is what to do for containerd to read the hosts.toml files in
// dir, said so that it can be followed as written: which file, where in
// it, and the exact lines. It never adds a table the file has.
func (w Where) Advice(dir string) string {
	q := quote(w.ConfigVersion, dir)
	file := w.File
	if file == "" {
		file = "containerd's configuration file"
	}
	switch {
	case w.Missing:
		version := max(w.ConfigVersion, 2)
		return fmt.Sprintf("Create %s with these lines:\nversion = %d\n\n%s\n  config_path = %s", file, version, tableFor(version), quote(version, dir))
	case w.Line != "" && len(w.More) > 0:
		// Every line of the value goes: its first alone would leave the
		// rest behind, and containerd would refuse the file.
		under := ""
		if w.Under != "" {
			under = " under " + w.Under + ","
		}
		return fmt.Sprintf("In %s,%s change these %d lines (config_path's value spans them)\n  %s\n  %s\nto the one line\n  %s = %s",
			file, under, 1+len(w.More), w.Line, strings.Join(w.More, "\n  "), w.Key, q)
	case w.Line != "" && w.Under != "":
		return fmt.Sprintf("In %s, under %s, change the line\n  %s\nto\n  %s = %s", file, w.Under, w.Line, w.Key, q)
	case w.Line != "":
		return fmt.Sprintf("In %s, change the line\n  %s\nto\n  %s = %s", file, w.Line, w.Key, q)
	case w.Under != "":
		return fmt.Sprintf("In %s, add this line right under %s:\n  %s = %s", file, w.Under, w.Key, q)
	case w.Table:
		// The table is there, but where its lines are is not known (the
		// fleet view), or it is made only by its sub-tables.
		return fmt.Sprintf("In %s, set config_path in the registry table it has (%s; do not add that table again: containerd would refuse the file):\n  config_path = %s", file, tableFor(w.ConfigVersion), q)
	}
	return fmt.Sprintf("Add these lines at the end of %s:\n%s\n  config_path = %s", file, tableFor(w.ConfigVersion), q)
}

// FixForReport is the advice for a node known by its report: its reasons
// (a verdict of Check says whether the registry table is in the
// configuration) and ConfigVersion. It names no file: a report carries
// none.
//
// Where the configuration has what containerd refuses beside config_path
// (LegacyMirrors, LegacyConfigsTLS), setting config_path alone would make
// containerd leave its CRI plugin out: the advice deletes them first. A
// report does not carry their lines; node-config's log on the node quotes
// them.
func FixForReport(reasons []Reason, configVersion int, dir string) string {
	w := Where{ConfigVersion: configVersion}
	var legacy []string
	for _, r := range reasons {
		if slices.Contains(checkCodes, r.Code) || slices.Contains(checkCodes, r.Why) {
			w.Table = w.Table || r.Table
		}
		switch {
		case r.Code == LegacyMirrors || r.Why == LegacyMirrors:
			legacy = append(legacy, "the legacy registry.mirrors")
		case r.Code == LegacyConfigsTLS || r.Why == LegacyConfigsTLS:
			legacy = append(legacy, `every registry.configs."<host>".tls table`)
		}
	}
	if len(legacy) == 0 {
		return w.Advice(dir)
	}
	return fmt.Sprintf("1. Delete %s from containerd's configuration, after moving what they set to hosts.toml files: containerd refuses them beside config_path (node-config's log on the node quotes their lines).\n2. %s",
		strings.Join(legacy, " and "), w.Advice(dir))
}

// where finds, in the configuration as containerd v reads it, the file
// whose registry settings containerd takes and what it has there.
//
// 1.x replaces a plugin section whole with a later file's: the file is the
// last that has the CRI section. 2.x merges key by key: the file is the
// last that sets config_path, else the last that has the registry table;
// each file names its table by its own version (a version 2 file's CRI
// registry is migrated). Without either, a new table goes in the main file.
func (c *Config) where(v Version) Where {
	v, _ = c.assume(v)
	if len(c.layers) == 0 || c.Files[0] != c.Path {
		version := 2
		if v.Major >= 2 {
			version = 3
		}
		return Where{File: c.Path, Missing: true, ConfigVersion: version}
	}
	target, section := -1, ""
	if v.Major < 2 {
		section, _, _ = c.registry(v)
		for i, l := range c.layers {
			if l.plugins[section] != nil {
				target = i
			}
		}
	} else {
		withTable := -1
		for i, l := range c.layers {
			sec := l.registrySection(v)
			reg := anyMap(l.plugins[sec]["registry"])
			if _, ok := reg["config_path"]; ok {
				target, section = i, sec
			}
			if reg != nil {
				withTable = i
			}
		}
		if target < 0 && withTable >= 0 {
			target, section = withTable, c.layers[withTable].registrySection(v)
		}
	}
	if target < 0 {
		return Where{File: c.Files[0], ConfigVersion: c.PluginsVersion(v), Key: "config_path"}
	}
	l := c.layers[target]
	version := l.version
	if v.Major < 2 {
		version = c.effectiveVersion() // 1.x reads every file by it
	}
	w := Where{File: c.Files[target], ConfigVersion: version}
	w.place(l.raw, []string{"plugins", section, "registry"}, l.configPathSet(section))
	return w
}

// registrySection is the plugin section, as this file names it, that 2.x
// takes the file's registry settings from: a file below 2.x's own config
// version is migrated, and its CRI plugin's registry replaces the images
// plugin's.
func (l layer) registrySection(v Version) string {
	target := 3
	if v.atLeast(2, 3) {
		target = 4
	}
	cri := criV2
	if l.version <= 1 {
		cri = criV1
	}
	if max(l.version, 1) < target {
		if _, ok := l.plugins[cri]["registry"]; ok {
			return cri
		}
	}
	return imagesV3
}

// configPathSet reports whether the file sets config_path in section's
// registry table.
func (l layer) configPathSet(section string) bool {
	_, ok := anyMap(l.plugins[section]["registry"])["config_path"]
	return ok
}

// place finds, in a file's text, config_path's line in the registry table
// at path and the header it is under, or the header a line goes under.
// What it cannot find for sure (an inline table, a line it does not see
// while the file sets the key) it leaves out: Advice then says less.
func (w *Where) place(raw []byte, path []string, set bool) {
	w.Key = "config_path"
	want := append(slices.Clone(path), "config_path")
	var header, dotted *tomlEntry
	inline := false
	for _, e := range scanTOML(string(raw)) {
		switch {
		case e.header && !e.array && slices.Equal(e.key, path):
			header = &e
		case !e.header && slices.Equal(e.key, want) && !e.inline:
			w.Table, w.Under, w.Line, w.Key, w.More = true, e.table, e.text, e.keyText, e.more
			return
		case !e.header && e.inline && len(e.key) <= len(path) && slices.Equal(e.key, path[:len(e.key)]):
			inline = true // registry = {...}, or a table above it inline
		case !e.header && dotted == nil && len(e.tablePath) < len(path) && len(e.key) > len(path) && slices.Equal(e.key[:len(path)], path):
			// registry made by a dotted key (registry.mirrors... = ...)
			// under a table above it.
			dotted = &e
		}
	}
	switch {
	case set || inline:
		// The file has it where this reader does not see it (an inline
		// table): say no more than where.
		w.Table = true
	case header != nil:
		w.Table, w.Under = true, header.text
	case dotted != nil:
		w.Table, w.Under = true, dotted.table
		w.Key = dottedKey(append(slices.Clone(path[len(dotted.tablePath):]), "config_path"))
	}
}

// tomlEntry is a table header or a key of a TOML file, as written.
type tomlEntry struct {
	header bool
	// key is the header's table, or the key's full path (its table's,
	// then its own dotted parts).
	key []string
	// text is the line, trimmed (with its comment, if any: it is quoted to
	// be found); keyText a key's own part, as written.
	text, keyText string
	// table and tablePath are the header a key is under, as written and
	// as a path ("" and nil at the top of the file).
	table     string
	tablePath []string
	// inline is true for a key whose value is an inline table.
	inline bool
	// more are the further lines of a key's value that spans lines,
	// trimmed.
	more []string
	// array is true for an array of tables' header ([[...]]).
	array bool
	// line and last are the first and last lines (0-based) of the entry:
	// a key's value may span several.
	line, last int
}

// scanTOML lists a TOML file's table headers and keys, line by line, as
// written. It is a reader for finding lines, not a parser: the file has
// been parsed already (Load), and what it does not make out it skips.
func scanTOML(raw string) []tomlEntry {
	var out []tomlEntry
	lines := strings.Split(raw, "\n")
	var table string
	var tablePath []string
	for i := 0; i < len(lines); i++ {
		s := strings.TrimSpace(lines[i])
		if s == "" || s[0] == '#' {
			continue
		}
		if s[0] == '[' {
			inner, array := s[1:], strings.HasPrefix(s, "[[")
			if array {
				inner = s[2:]
			}
			key, rest, ok := parseKey(inner)
			if !ok || !strings.HasPrefix(strings.TrimSpace(rest), "]") {
				continue
			}
			table, tablePath = s, key
			out = append(out, tomlEntry{header: true, array: array, key: key, text: s, line: i, last: i})
			continue
		}
		key, rest, ok := parseKey(s)
		rest = strings.TrimSpace(rest)
		if !ok || !strings.HasPrefix(rest, "=") {
			continue
		}
		value := strings.TrimSpace(rest[1:])
		e := tomlEntry{
			key: append(slices.Clone(tablePath), key...), text: s,
			keyText: strings.TrimSpace(s[:len(s)-len(rest)]),
			table:   table, tablePath: tablePath, inline: strings.HasPrefix(value, "{"),
		}
		last := skipValue(lines, i, value)
		for _, l := range lines[i+1 : last+1] {
			e.more = append(e.more, strings.TrimSpace(l))
		}
		e.line, e.last = i, last
		out = append(out, e)
		i = last
	}
	return out
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+`)

// parseKey reads a dotted key at the start of s, and returns its parts and
// what follows it.
func parseKey(s string) (key []string, rest string, ok bool) {
	for {
		s = strings.TrimLeft(s, " \t")
		switch {
		case strings.HasPrefix(s, `"`):
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, "", false
			}
			part, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil, "", false
			}
			key, s = append(key, part), s[end+1:]
		case strings.HasPrefix(s, "'"):
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", false
			}
			key, s = append(key, s[1:end+1]), s[end+2:]
		default:
			m := bareKey.FindString(s)
			if m == "" {
				return nil, "", false
			}
			key, s = append(key, m), s[len(m):]
		}
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, ".") {
			return key, s, true
		}
		s = s[1:]
	}
}

// dottedKey writes a key's parts as a dotted key.
func dottedKey(parts []string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		if bareKey.FindString(p) == p {
			out[i] = p
		} else {
			out[i] = String(p)
		}
	}
	return strings.Join(out, ".")
}

// skipValue returns the last line of the value that starts on line i:
// a multi-line string or array ends on a later one.
func skipValue(lines []string, i int, value string) int {
	depth := 0
	var quote string // the open string's delimiter
	s := value
	for {
		for j := 0; j < len(s); j++ {
			switch {
			case quote != "":
				if quote[0] == '"' && s[j] == '\\' {
					j++
				} else if strings.HasPrefix(s[j:], quote) {
					j += len(quote) - 1
					quote = ""
				}
			case strings.HasPrefix(s[j:], `"""`) || strings.HasPrefix(s[j:], "'''"):
				quote = s[j : j+3]
				j += 2
			case s[j] == '"' || s[j] == '\'':
				quote = s[j : j+1]
			case s[j] == '[' || s[j] == '{':
				depth++
			case s[j] == ']' || s[j] == '}':
				depth--
			case s[j] == '#':
				j = len(s)
			}
		}
		if len(quote) == 1 {
			quote = "" // a one-line string ends with its line
		}
		if (quote == "" && depth <= 0) || i+1 >= len(lines) {
			return i
		}
		i++
		s = lines[i]
	}
}
