package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

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

// tagList is the whole of a tags/list answer: what is relayed is these two
// fields, encoded here, never the upstream's bytes.
type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// serveTags relays tags/list from upstream: tags change, so they are not
// cached. The answer is parsed, checked and encoded anew, and the next
// page's Link is rebuilt from its cursor: an upstream (or wherever it
// redirected) can put nothing else in front of the client.
func (s *Server) serveTags(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	logAttrs(r.Context(), slog.String("upstream", req.upstream.Name()), slog.String("repo", req.repo))
	in := r.URL.Query()
	q := url.Values{}
	if n := in.Get("n"); n != "" {
		if v, err := strconv.Atoi(n); err != nil || v < 0 {
			return errcode.New(http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "n must be a non-negative integer", nil)
		}
		q.Set("n", n)
	}
	if last := in.Get("last"); last != "" {
		q.Set("last", last)
	}
	resp, err := req.upstream.Do(r.Context(), http.MethodGet, req.repo, "/v2/"+req.repo+"/tags/list", q, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return req.upstream.StatusError(resp, errcode.NameUnknown)
	}
	tags, err := readTagList(resp.Body)
	resp.Body.Close()
	if err != nil {
		return errcode.New(http.StatusBadGateway, errcode.Unavailable, "upstream "+req.upstream.Name()+" answered tags/list with something that is not a tag list",
			fmt.Errorf("tags/list of %s: %w", req.repo, err))
	}
	body, err := json.Marshal(tagList{Name: req.repo, Tags: tags})
	if err != nil {
		return fmt.Errorf("encode tags list: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if link, ok := nextPage(resp.Header.Get("Link"), req.repo, in.Get("ns")); ok {
		h.Set("Link", link)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
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

// nextPage is the Link to the page after this one (`</v2/x/tags/list?last=a&n=1>; rel="next"`),
// built from the cursor and page size in the upstream's Link, with ns so
// that the next page goes to the same upstream. ok is false when the
// upstream sent none, or one that is not such a link.
func nextPage(link, repo, ns string) (string, bool) {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start || !strings.Contains(link[end:], `rel="next"`) {
		return "", false
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return "", false
	}
	from := u.Query()
	q := url.Values{}
	last := from.Get("last")
	if last == "" || len(last) > maxLastLen {
		return "", false
	}
	q.Set("last", last)
	if n := from.Get("n"); n != "" {
		if v, err := strconv.Atoi(n); err != nil || v < 0 {
			return "", false
		}
		q.Set("n", n)
	}
	if ns != "" {
		q.Set("ns", ns)
	}
	return "</v2/" + repo + "/tags/list?" + q.Encode() + `>; rel="next"`, true
}
