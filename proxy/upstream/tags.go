package upstream

import (
	"context"
	"encoding/json"
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
	// maxTagsListSize caps a tags/list answer read from upstream; one that
	// is longer is refused, not cut.
	maxTagsListSize = 16 << 20
	// maxTags caps the tags of one answer: a repository with more is
	// listed in pages (n, last).
	maxTags = 100_000
	// maxLastLen caps the pagination cursor taken from an upstream's Link.
	maxLastLen = 256
)

var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// TagPage is one page of a repository's tags, as far as an upstream's
// answer is believed: its tags, and where the next page starts. Nothing
// else of the answer is kept.
type TagPage struct {
	// Tags are the page's tags, each a valid tag; never nil.
	Tags []string
	// Next is where the page after this one starts: ask Tags with it as
	// last. "" when the upstream linked to no next page, or to one that is
	// not such a page.
	Next string
	// NextN is the page size the upstream's link to the next page asked
	// for; -1 when it named none.
	NextN int
}

// Tags lists the repository's tags: at most n (n < 0 leaves the page size
// to the upstream) after last ("" from the start). The answer is read
// within maxTagsListSize and maxTags and each tag checked: anything else is
// a 502 UNAVAILABLE. A refusal or failure upstream is the *errcode.Error a
// client would get (NAME_UNKNOWN for a 404).
func (r *Repository) Tags(ctx context.Context, n int, last string) (TagPage, error) {
	q := url.Values{}
	if n >= 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if last != "" {
		q.Set("last", last)
	}
	resp, err := r.reg.do(ctx, http.MethodGet, r.name, r.path("tags", "list"), q, nil)
	if err != nil {
		return TagPage{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return TagPage{}, r.reg.statusError(resp, errcode.NameUnknown)
	}
	tags, err := readTagList(resp.Body)
	resp.Body.Close()
	if err != nil {
		return TagPage{}, errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+r.reg.name+" answered tags/list with something that is not a tag list",
			fmt.Errorf("tags/list of %s: %w", r.name, err))
	}
	next, nextN := nextPage(resp.Header.Get("Link"))
	return TagPage{Tags: tags, Next: next, NextN: nextN}, nil
}

// readTagList reads an upstream's tags/list answer: one JSON object whose
// tags are each a valid tag, within maxTagsListSize and maxTags.
func readTagList(body io.Reader) ([]string, error) {
	b, err := io.ReadAll(io.LimitReader(body, maxTagsListSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxTagsListSize {
		return nil, fmt.Errorf("longer than %d bytes", maxTagsListSize)
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	if len(list.Tags) > maxTags {
		return nil, fmt.Errorf("%d tags, more than %d", len(list.Tags), maxTags)
	}
	for _, t := range list.Tags {
		if !anchoredTag.MatchString(t) {
			return nil, fmt.Errorf("%q is not a tag", t)
		}
	}
	if list.Tags == nil {
		list.Tags = []string{}
	}
	return list.Tags, nil
}

// nextPage is the cursor and page size (-1: none) of the page an upstream's
// Link names as next (`</v2/x/tags/list?last=a&n=1>; rel="next"`). The
// cursor is "" when the upstream sent no such link, or one whose cursor or
// page size is not one: the rest of the link (where it points, what else it
// says) is never used.
func nextPage(link string) (last string, n int) {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start || !strings.Contains(link[end:], `rel="next"`) {
		return "", -1
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return "", -1
	}
	from := u.Query()
	last = from.Get("last")
	if last == "" || len(last) > maxLastLen {
		return "", -1
	}
	n = -1
	if s := from.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return "", -1
		}
		n = v
	}
	return last, n
}
