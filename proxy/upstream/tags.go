package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/distribution/reference"

	"github.com/regnorm/regnorm/proxy/errcode"
)

const (
	// tagsPage is the most tags an upstream is asked for at once (n): a
	// client that asks for more, or names no n, gets pages of this many and
	// a Link to the next one, as the distribution spec allows. Quay pages
	// by 100, and distribution by what its n says (all, without one).
	tagsPage = 1000
	// maxTagsListSize caps a tags/list answer read from upstream; one that
	// is longer is refused, not cut. A page of tagsPage tags of the longest
	// kind (128 characters) is an eighth of it: an upstream that pages as
	// asked never comes near it.
	maxTagsListSize = 1 << 20
	// maxTags caps the tags of one answer, from an upstream that sends more
	// than it was asked for.
	maxTags = 10_000
	// tagOverhead is the memory a tag kept costs beyond its text: its
	// string header, in a slice up to twice as long as its tags.
	tagOverhead = 32
	// maxCursorLen caps the pagination cursor taken from an upstream's Link
	// (a tag is at most 128 characters, Quay's page token about 150).
	maxCursorLen = 512
	// maxSkipDepth bounds the nesting of what a tag list holds besides its
	// tags (GCR's manifest details are three deep).
	maxSkipDepth = 32
)

var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// Cursor is where a page of tags starts: after the tag last names (the
// distribution spec's cursor), or where an upstream's own page token says
// (Quay's next_page). The zero Cursor is the first page.
type Cursor struct {
	Name  string // "last" or "next_page"
	Value string
}

// cursorNames are the query parameters a page of tags starts from, the
// one preferred first.
var cursorNames = []string{"next_page", "last"}

// CursorFrom is the cursor a tags/list query names.
func CursorFrom(q url.Values) Cursor {
	for _, name := range cursorNames {
		if v := q.Get(name); v != "" {
			return Cursor{Name: name, Value: v}
		}
	}
	return Cursor{}
}

// TagPage is one page of a repository's tags, as far as an upstream's
// answer is believed: its tags, and where the next page starts. Nothing
// else of the answer is kept.
type TagPage struct {
	// Tags are the page's tags, each a valid tag; never nil.
	Tags []string
	// Next is where the page after this one starts: ask Tags with it.
	// The zero Cursor when the upstream linked to no next page.
	Next Cursor
	// NextN is the page size the upstream's link to the next page asked
	// for; -1 when it named none.
	NextN int
}

// Tags lists the repository's tags: at most n (n < 0: a page of the
// upstream's size, within tagsPage) from where from says. The answer is
// read as it comes, each tag checked, within maxTagsListSize and maxTags
// and the upstream's share of the memory for answers: anything else is a
// 502 UNAVAILABLE, as is a link to a next page that cannot be rebuilt (a
// client would take the page for the whole list). A refusal or failure
// upstream is the *errcode.Error a client would get (NAME_UNKNOWN for a
// 404).
func (r *Repository) Tags(ctx context.Context, n int, from Cursor) (TagPage, error) {
	u := r.reg
	if n < 0 || n > tagsPage {
		n = tagsPage
	}
	q := url.Values{"n": {strconv.Itoa(n)}}
	if from.Value != "" {
		q.Set(from.Name, from.Value)
	}
	resp, err := u.do(ctx, http.MethodGet, r.name, r.path("tags", "list"), q, nil)
	if err != nil {
		return TagPage{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return TagPage{}, u.statusError(resp, errcode.NameUnknown)
	}
	defer resp.Body.Close()
	next, nextN, err := nextPage(resp.Header.Values("Link"))
	if err != nil {
		return TagPage{}, errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" links tags/list to a next page regnorm cannot pass on",
			fmt.Errorf("tags/list of %s: %w", r.name, err))
	}
	h := u.mem.hold()
	defer h.release()
	tags, err := readTagList(resp.Body, h)
	switch {
	case errors.Is(err, ErrBodyMemorySpent):
		return TagPage{}, err
	case err != nil:
		return TagPage{}, errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+u.name+" answered tags/list with something that is not a tag list",
			fmt.Errorf("tags/list of %s: %w", r.name, err))
	}
	return TagPage{Tags: tags, Next: next, NextN: nextN}, nil
}

// readTagList reads an upstream's tags/list answer as it comes: one JSON
// object whose tags field is a list of valid tags (or null), each checked
// as it is read, within maxTagsListSize and maxTags. Its other fields are
// read past, never held. What it holds is charged to h.
func readTagList(body io.Reader, h *hold) ([]string, error) {
	dec := json.NewDecoder(&chargedReader{r: body, h: h, limit: maxTagsListSize})
	dec.UseNumber()
	if err := delim(dec, '{'); err != nil {
		return nil, err
	}
	tags := []string{}
	seen := false
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if key != "tags" {
			if err := skipValue(dec); err != nil {
				return nil, err
			}
			continue
		}
		if seen {
			return nil, errors.New("two tags fields")
		}
		seen = true
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if tok == nil {
			continue
		}
		if tok != json.Delim('[') {
			return nil, errors.New("tags is not a list")
		}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			tag, ok := tok.(string)
			if !ok || !anchoredTag.MatchString(tag) {
				return nil, fmt.Errorf("%.140q is not a tag", fmt.Sprint(tok))
			}
			if len(tags) == maxTags {
				return nil, fmt.Errorf("more than %d tags", maxTags)
			}
			if err := h.add(tagOverhead); err != nil {
				return nil, err
			}
			tags = append(tags, tag)
		}
		if err := delim(dec, ']'); err != nil {
			return nil, err
		}
	}
	if err := delim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("something after the tag list (%v)", err)
	}
	return tags, nil
}

// delim reads the delimiter d, or fails.
func delim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != d {
		return fmt.Errorf("%v where %v belongs", tok, d)
	}
	return nil
}

// skipValue reads past one value, as deep as maxSkipDepth.
func skipValue(dec *json.Decoder) error {
	for depth := 0; ; {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if depth++; depth > maxSkipDepth {
				return fmt.Errorf("nested deeper than %d", maxSkipDepth)
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// nextPage is the cursor and page size (-1: none) of the page an upstream's
// Link headers name as next (`</v2/x/tags/list?last=a&n=1>; rel="next"`):
// the zero Cursor when they name none. Only the cursor and n are taken
// from the link; where it points and whatever else it says are never used.
// A next link whose cursor is not one regnorm can pass on (another name,
// longer than maxCursorLen) or whose n is not a number is an error: a
// client given no link would take the page for the whole list.
func nextPage(links []string) (Cursor, int, error) {
	target, ok := nextLink(links)
	if !ok {
		return Cursor{}, -1, nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return Cursor{}, -1, fmt.Errorf("next link: %w", err)
	}
	q := u.Query()
	from := CursorFrom(q)
	switch {
	case from.Value == "":
		return Cursor{}, -1, fmt.Errorf("next link %.200q names no cursor regnorm knows (%s)", target, strings.Join(cursorNames, ", "))
	case len(from.Value) > maxCursorLen:
		return Cursor{}, -1, fmt.Errorf("next link's %s is longer than %d bytes", from.Name, maxCursorLen)
	}
	n := -1
	if s := q.Get("n"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			return Cursor{}, -1, fmt.Errorf("next link's n %.20q is not a page size", s)
		}
	}
	return from, n, nil
}

// nextLink is the target of the link with relation next among Link header
// values (`<a>; rel="prev", <b>; rel="next"`).
func nextLink(values []string) (string, bool) {
	for _, v := range values {
		for rest := v; ; {
			start := strings.IndexByte(rest, '<')
			if start < 0 {
				break
			}
			end := strings.IndexByte(rest[start:], '>')
			if end < 0 {
				break
			}
			target := rest[start+1 : start+end]
			rest = rest[start+end+1:]
			params := rest
			if i := strings.IndexByte(params, '<'); i >= 0 {
				params = params[:i]
			}
			for _, p := range strings.Split(params, ";") {
				name, val, _ := strings.Cut(strings.TrimSpace(strings.TrimRight(strings.TrimSpace(p), ",")), "=")
				if !strings.EqualFold(strings.TrimSpace(name), "rel") {
					continue
				}
				for _, rel := range strings.Fields(strings.Trim(strings.TrimSpace(val), `"`)) {
					if strings.EqualFold(rel, "next") {
						return target, true
					}
				}
			}
		}
	}
	return "", false
}
