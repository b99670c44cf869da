package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/regnorm/regnorm/proxy/errcode"
)

// maxTagsListSize caps a tags/list answer relayed from upstream.
const maxTagsListSize = 16 << 20

// serveTags relays tags/list from upstream: tags change, so they are not cached.
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
	defer resp.Body.Close()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if link := resp.Header.Get("Link"); link != "" {
		h.Set("Link", keepNS(link, in.Get("ns")))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		if _, err := io.Copy(w, io.LimitReader(resp.Body, maxTagsListSize)); err != nil {
			return fmt.Errorf("relay tags list: %w", err)
		}
	}
	return nil
}

// keepNS adds ns to a pagination Link (`</v2/x/tags/list?last=a&n=1>; rel="next"`)
// so the next page goes to the same upstream.
func keepNS(link, ns string) string {
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if ns == "" || start < 0 || end < start {
		return link
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return link
	}
	q := u.Query()
	q.Set("ns", ns)
	u.RawQuery = q.Encode()
	return link[:start+1] + u.String() + link[end:]
}
