package main

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// checkYAML walks a configuration document against the Config type before
// it is decoded, and returns every mistake by its field path, with what was
// expected: an unknown field with the nearest known one, a value of the
// wrong type. yaml.v3's own errors name a line and a Go type instead
// ("field tagTtl not found in type main.Config").
func checkYAML(doc *yaml.Node) []error {
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil
		}
		doc = doc.Content[0]
	}
	c := &checker{checked: map[*yaml.Node]bool{}}
	c.node(doc, reflect.TypeFor[Config](), "")
	if c.dropped > 0 {
		c.errs = append(c.errs, fmt.Errorf("config: and %d more mistakes", c.dropped))
	}
	return c.errs
}

// Bounds on the checker's work, whatever the document: the errors it
// reports, and the nodes it visits (an alias is walked once, however often
// it is used).
const (
	maxConfigErrors = 20
	maxConfigNodes  = 100000
)

type checker struct {
	errs    []error
	dropped int
	visited int
	checked map[*yaml.Node]bool // aliased nodes already walked
}

func (c *checker) report(err error) {
	if len(c.errs) < maxConfigErrors {
		c.errs = append(c.errs, err)
	} else {
		c.dropped++
	}
}

func (c *checker) node(n *yaml.Node, t reflect.Type, path string) {
	if c.visited++; c.visited > maxConfigNodes {
		if c.visited == maxConfigNodes+1 {
			c.report(fmt.Errorf("config: the file has more than %d values", maxConfigNodes))
		}
		return
	}
	line := n.Line
	if n.Kind == yaml.AliasNode {
		if c.checked[n.Alias] {
			return // its mistakes are reported once, where it is defined
		}
		c.checked[n.Alias] = true
		n = n.Alias
	}
	bad := func(format string, args ...any) {
		field := path
		if field == "" {
			field = "the file"
		}
		c.report(fmt.Errorf("config: %s (line %d): %s", field, line, fmt.Sprintf(format, args...)))
	}
	if n.Tag == "!!null" {
		return // yaml.v3 leaves the field's zero value; validate judges it
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			bad("expected a mapping of fields, got %s", describe(n))
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, value := n.Content[i], n.Content[i+1]
			if key.Tag == "!!merge" {
				// "<<: *anchor" (or a list of them): the anchored mappings'
				// fields are this mapping's.
				merged := []*yaml.Node{value}
				if value.Kind == yaml.SequenceNode {
					merged = value.Content
				}
				for _, m := range merged {
					c.node(m, t, path)
				}
				continue
			}
			name := join(path, key.Value)
			if key.Kind != yaml.ScalarNode {
				c.report(fmt.Errorf("config: %s (line %d): a field name must be a plain word", join(path, "?"), key.Line))
				continue
			}
			f, ok := fields[key.Value]
			if !ok {
				msg := fmt.Sprintf("config: %s (line %d): unknown field", name, key.Line)
				if near := nearest(key.Value, fields); near != "" {
					msg += "; did you mean " + join(path, near) + "?"
				}
				c.report(fmt.Errorf("%s", msg))
				continue
			}
			c.node(value, f.Type, name)
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			bad("expected a list, got %s", describe(n))
			return
		}
		for i, item := range n.Content {
			c.node(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			bad("expected %s, got %s", expected(t), describe(n))
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			bad("%q is not %s", n.Value, expected(t))
		}
	}
}

// yamlName is f's name in YAML, as yaml.v3 reads it; false for a field
// YAML does not see.
func yamlName(f reflect.StructField) (string, bool) {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" || !f.IsExported() {
		return "", false
	}
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, true
}

// yamlFields maps the YAML names of t's fields to the fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		if name, ok := yamlName(t.Field(i)); ok {
			out[name] = t.Field(i)
		}
	}
	return out
}

// expected says in words what a value of type t looks like.
func expected(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration such as 90s, 10m or 1h30m"
	case t == reflect.TypeFor[Size]():
		return "a size such as 500MB or 10GiB"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	case t.Kind() == reflect.String:
		return "a string"
	}
	return "a " + t.Kind().String()
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// nearest is the known field closest to a misspelt one: the same but for
// case, or at most two edits away.
func nearest(name string, fields map[string]reflect.StructField) string {
	best, bestDist := "", 3
	for known := range fields {
		if strings.EqualFold(known, name) {
			return known
		}
		if d := editDistance(strings.ToLower(name), strings.ToLower(known)); d < bestDist || (d == bestDist && known < best) {
			best, bestDist = known, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
