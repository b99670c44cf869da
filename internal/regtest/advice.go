package regtest

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// FollowAdvice does what node-config's advice (containerdcfg's
// Where.Advice) says, to the letter, as an operator would: it creates the
// file it names, adds the lines at its end, changes the one line it
// quotes under the table header it quotes (or the lines of a value that
// spans several, to one), or adds a line right under that header. Anything else, or a file that does not hold what the advice
// quotes, is an error: advice that cannot be followed as written is wrong.
//
// Advice of several steps numbers them ("1. ", "2. "...): each is followed
// in order, as advice of its own.
func FollowAdvice(advice string) error {
	if strings.HasPrefix(advice, "1. ") {
		starts := stepRe.FindAllStringSubmatchIndex(advice, -1)
		for i, m := range starts {
			if n, _ := strconv.Atoi(advice[m[2]:m[3]]); n != i+1 {
				return fmt.Errorf("step %d numbered %d: %q", i+1, n, advice)
			}
			end := len(advice)
			if i+1 < len(starts) {
				end = starts[i+1][0]
			}
			if err := FollowAdvice(strings.TrimSuffix(advice[m[1]:end], "\n")); err != nil {
				return fmt.Errorf("step %d: %w", i+1, err)
			}
		}
		return nil
	}
	first, rest, _ := strings.Cut(advice, "\n")
	switch {
	case deleteLines.MatchString(first):
		m := deleteLines.FindStringSubmatch(first)
		old := strings.Split(rest, "\n")
		n, _ := strconv.Atoi(m[4])
		if m[3] == "this line" {
			n = 1
		}
		if len(old) != n || rest == "" || (n == 1) != (m[3] == "this line") {
			return fmt.Errorf("not %q to delete: %q", m[3], advice)
		}
		return deleteQuoted(m[1], m[2], old)
	case strings.HasPrefix(first, "Create ") && strings.HasSuffix(first, " with these lines:"):
		file := strings.TrimSuffix(strings.TrimPrefix(first, "Create "), " with these lines:")
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(rest + "\n")
		return err
	case strings.HasPrefix(first, "Add these lines at the end of ") && strings.HasSuffix(first, ":"):
		file := strings.TrimSuffix(strings.TrimPrefix(first, "Add these lines at the end of "), ":")
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		return os.WriteFile(file, append(b, "\n"+rest+"\n"...), 0o644)
	case strings.HasPrefix(first, "In ") && strings.HasSuffix(first, "change the line"):
		old, replacement, ok := strings.Cut(rest, "\nto\n")
		if !ok || strings.Contains(old, "\n") || strings.Contains(replacement, "\n") {
			return fmt.Errorf("not one line changed to another: %q", advice)
		}
		file, header := fileAndHeader(strings.TrimSuffix(strings.TrimPrefix(first, "In "), " change the line"), ", under ")
		return replaceLines(file, header, []string{old}, replacement)
	case strings.HasPrefix(first, "In ") && changeLines.MatchString(first):
		m := changeLines.FindStringSubmatch(first)
		block, replacement, ok := strings.Cut(rest, "\nto the one line\n")
		old := strings.Split(block, "\n")
		if n, _ := strconv.Atoi(m[2]); !ok || len(old) != n || n < 2 || strings.Contains(replacement, "\n") {
			return fmt.Errorf("not %s lines changed to one: %q", m[2], advice)
		}
		file, header := fileAndHeader(strings.TrimPrefix(m[1], "In "), ", under ")
		return replaceLines(file, header, old, replacement)
	case strings.HasPrefix(first, "In ") && strings.Contains(first, ", add this line right under ") && strings.HasSuffix(first, ":"):
		file, header := fileAndHeader(strings.TrimSuffix(strings.TrimPrefix(first, "In "), ":"), ", add this line right under ")
		if header == "" || strings.Contains(rest, "\n") {
			return fmt.Errorf("not one line under a header: %q", advice)
		}
		return editLines(file, header, func(lines []string, at int) ([]string, error) {
			indent := lines[at][:len(lines[at])-len(strings.TrimLeft(lines[at], " \t"))]
			return append(lines[:at+1], append([]string{indent + "  " + strings.TrimSpace(rest)}, lines[at+1:]...)...), nil
		})
	}
	return fmt.Errorf("advice not understood: %q", advice)
}

// stepRe starts a step of numbered advice.
var stepRe = regexp.MustCompile(`(?m)^(\d+)\. `)

// deleteLines is the first line of advice that deletes lines: FILE, the
// table they are under (none: a table's own header leads them, or they
// are at the top of the file), how many, and what they are.
var deleteLines = regexp.MustCompile(`^In (.+?)(?:, under (\[.*\]))?, delete (this line|these (\d+) lines) \([^()]*\):$`)

// deleteQuoted deletes from file the lines old (each trimmed), one after
// the other (blank lines between them are left): found under header, or
// led by a table header of their own, which is found wherever it is, or
// else before the file's first table.
func deleteQuoted(file, header string, old []string) error {
	for i := range old {
		old[i] = strings.TrimSpace(old[i])
	}
	return editLines(file, header, func(lines []string, from int) ([]string, error) {
		for i := from; i < len(lines); i++ {
			s := strings.TrimSpace(lines[i])
			if i > from && strings.HasPrefix(s, "[") && (header != "" || !strings.HasPrefix(old[0], "[")) {
				break // the next table: the lines are not under this one
			}
			if s != old[0] {
				continue
			}
			matched := []int{i}
			for j := i + 1; j < len(lines) && len(matched) < len(old); j++ {
				switch t := strings.TrimSpace(lines[j]); {
				case t == "":
				case t == old[len(matched)]:
					matched = append(matched, j)
				default:
					j = len(lines)
				}
			}
			if len(matched) < len(old) {
				continue
			}
			var out []string
			for j, l := range lines {
				if !slices.Contains(matched, j) {
					out = append(out, l)
				}
			}
			return out, nil
		}
		return nil, fmt.Errorf("no lines %q to delete", old)
	})
}

// changeLines is the first line of advice that changes the lines of a
// value spanning several.
var changeLines = regexp.MustCompile(`^(.*) change these (\d+) lines \(config_path's value spans them\)$`)

// replaceLines replaces, in file under header (or anywhere, without one),
// the lines that are old (each trimmed, one after the other, before the
// next table) with the one line replacement, indented as the first was.
func replaceLines(file, header string, old []string, replacement string) error {
	return editLines(file, header, func(lines []string, from int) ([]string, error) {
		for i := from; i < len(lines); i++ {
			s := strings.TrimSpace(lines[i])
			if header != "" && i > from && strings.HasPrefix(s, "[") {
				break // the next table
			}
			if i+len(old) > len(lines) {
				break
			}
			match := true
			for j, o := range old {
				match = match && strings.TrimSpace(lines[i+j]) == strings.TrimSpace(o)
			}
			if match {
				indent := lines[i][:len(lines[i])-len(strings.TrimLeft(lines[i], " \t"))]
				return slices.Concat(lines[:i], []string{indent + strings.TrimSpace(replacement)}, lines[i+len(old):]), nil
			}
		}
		return nil, fmt.Errorf("no lines %q", old)
	})
}

// fileAndHeader splits "FILE<sep>HEADER" (or "FILE,": no header).
func fileAndHeader(s, sep string) (file, header string) {
	if file, header, ok := strings.Cut(s, sep); ok {
		return file, strings.TrimSuffix(header, ",")
	}
	return strings.TrimSuffix(s, ","), ""
}

// editLines edits file's lines with edit, from the one line that is
// header (or from the first line, without a header).
func editLines(file, header string, edit func(lines []string, from int) ([]string, error)) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	lines := strings.Split(string(b), "\n")
	from := 0
	if header != "" {
		from = -1
		for i, l := range lines {
			if strings.TrimSpace(l) == header {
				if from >= 0 {
					return fmt.Errorf("%s: header %s twice", file, header)
				}
				from = i
			}
		}
		if from < 0 {
			return fmt.Errorf("%s: no header %s", file, header)
		}
	}
	lines, err = edit(lines, from)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if lines == nil {
		return errors.New("nothing edited")
	}
	return os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o644)
}
