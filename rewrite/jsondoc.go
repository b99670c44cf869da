package rewrite

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrInvalidJSON means a document is not valid JSON, or is ambiguous: a key
// appears twice in an object regnorm reads (decoders disagree on which wins).
var ErrInvalidJSON = errors.New("invalid or ambiguous JSON")

// span is the byte range [start, end) of a value in a document.
type span struct{ start, end int }

// jsonDoc indexes the values of a JSON document down to a fixed depth by
// their path ("config/mediaType", "layers/0/digest"), with exact,
// case-sensitive key matching: what regnorm reads is exactly what it edits.
type jsonDoc struct {
	raw      []byte
	spans    map[string]span
	keyBytes int // the index's path bytes, bounded by maxIndexBytes
}

// maxPathDepth is how deep values are indexed: enough for
// manifests/<i>/digest, manifests/<i>/platform/os and rootfs/diff_ids/<i>.
const maxPathDepth = 4

// The index is bounded whatever the document: its paths hold at most
// maxIndexBytes and maxSpans values (a manifest of 4 MiB of tiny values under
// long keys would otherwise take gigabytes). Keys longer than maxKeyLen are
// never read: their values are not indexed.
const (
	maxKeyLen     = 256
	maxSpans      = 1 << 16
	maxIndexBytes = 4 << 20
)

func parseDoc(raw []byte) (*jsonDoc, error) {
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrInvalidJSON)
	}
	d := &jsonDoc{raw: raw, spans: map[string]span{}}
	s := scanner{doc: raw}
	if err := s.value(d, nil, true); err != nil {
		return nil, err
	}
	return d, nil
}

func pathKey(path ...string) string { return strings.Join(path, "\x00") }

// raw returns the bytes of the value at path.
func (d *jsonDoc) rawAt(path ...string) ([]byte, bool) {
	sp, ok := d.spans[pathKey(path...)]
	if !ok {
		return nil, false
	}
	return d.raw[sp.start:sp.end], true
}

// str returns the string at path; ok is false when absent or not a string.
func (d *jsonDoc) str(path ...string) (string, bool) {
	b, ok := d.rawAt(path...)
	if !ok || len(b) == 0 || b[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(b, &s) != nil {
		return "", false
	}
	return s, true
}

// int64At returns the integer at path.
func (d *jsonDoc) int64At(path ...string) (int64, bool) {
	b, ok := d.rawAt(path...)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	return n, err == nil
}

// arrayLen returns the length of the array at path; ok is false when the
// value is absent or not an array.
func (d *jsonDoc) arrayLen(path ...string) (int, bool) {
	b, ok := d.rawAt(path...)
	if !ok || len(b) == 0 || b[0] != '[' {
		return 0, false
	}
	n := 0
	for {
		if _, ok := d.spans[pathKey(append(slices.Clone(path), strconv.Itoa(n))...)]; !ok {
			return n, true
		}
		n++
	}
}

// edit replaces the value at path with value (raw JSON).
type edit struct {
	path  []string
	value []byte
}

// splice returns the document with edits applied. Every byte outside the
// edited values is kept.
func (d *jsonDoc) splice(edits []edit) ([]byte, error) {
	type cut struct {
		span
		value []byte
	}
	cuts := make([]cut, 0, len(edits))
	for _, e := range edits {
		sp, ok := d.spans[pathKey(e.path...)]
		if !ok {
			return nil, fmt.Errorf("splice: no value at %s", strings.Join(e.path, "."))
		}
		cuts = append(cuts, cut{sp, e.value})
	}
	slices.SortFunc(cuts, func(a, b cut) int { return a.start - b.start })
	var out []byte
	prev := 0
	for _, c := range cuts {
		if c.start < prev {
			return nil, errors.New("splice: overlapping edits")
		}
		out = append(out, d.raw[prev:c.start]...)
		out = append(out, c.value...)
		prev = c.end
	}
	return append(out, d.raw[prev:]...), nil
}

// scanner walks a document already checked by json.Valid.
type scanner struct {
	doc []byte
	pos int
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.doc) {
		switch s.doc[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) skipString() {
	s.pos++ // opening quote
	for s.doc[s.pos] != '"' {
		if s.doc[s.pos] == '\\' {
			s.pos++
		}
		s.pos++
	}
	s.pos++
}

// value scans one value at path, recording it and its children in d while
// the path is no deeper than maxPathDepth and indexed (see maxKeyLen).
func (s *scanner) value(d *jsonDoc, path []string, indexed bool) error {
	s.skipSpace()
	start := s.pos
	record := indexed && len(path) <= maxPathDepth
	switch s.doc[s.pos] {
	case '{':
		s.pos++
		for {
			s.skipSpace()
			if s.doc[s.pos] == '}' {
				s.pos++
				break
			}
			if s.doc[s.pos] == ',' {
				s.pos++
				s.skipSpace()
			}
			keyStart := s.pos
			s.skipString()
			var key string
			if err := json.Unmarshal(s.doc[keyStart:s.pos], &key); err != nil {
				return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
			}
			if strings.IndexByte(key, 0) >= 0 {
				// NUL separates path elements in the index.
				return fmt.Errorf("%w: key with a NUL character", ErrInvalidJSON)
			}
			s.skipSpace()
			s.pos++ // ':'
			// A path is built only for what is indexed: a deep or
			// unindexed subtree costs no memory per value.
			childIndexed := record && len(key) <= maxKeyLen
			var child []string
			if childIndexed {
				child = append(slices.Clone(path), key)
			}
			if childIndexed && len(child) <= maxPathDepth {
				if _, dup := d.spans[pathKey(child...)]; dup {
					return fmt.Errorf("%w: key %q appears twice", ErrInvalidJSON, strings.Join(child, "."))
				}
			}
			if err := s.value(d, child, childIndexed); err != nil {
				return err
			}
		}
	case '[':
		s.pos++
		for i := 0; ; i++ {
			s.skipSpace()
			if s.doc[s.pos] == ']' {
				s.pos++
				break
			}
			if s.doc[s.pos] == ',' {
				s.pos++
			}
			var child []string
			if record {
				child = append(slices.Clone(path), strconv.Itoa(i))
			}
			if err := s.value(d, child, record); err != nil {
				return err
			}
		}
	case '"':
		s.skipString()
	default: // number, true, false, null
		for s.pos < len(s.doc) && !strings.ContainsRune(",]} \t\r\n", rune(s.doc[s.pos])) {
			s.pos++
		}
	}
	if record {
		key := pathKey(path...)
		d.keyBytes += len(key)
		if len(d.spans) >= maxSpans || d.keyBytes > maxIndexBytes {
			return fmt.Errorf("%w: more than %d values or %d bytes of paths to index", ErrInvalidJSON, maxSpans, maxIndexBytes)
		}
		d.spans[key] = span{start, s.pos}
	}
	return nil
}
