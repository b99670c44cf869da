package proxy

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// tagList is the whole of a tags/list answer: what is relayed is these two
// fields, encoded here, never the upstream's bytes.
type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// serveTags relays tags/list from upstream: tags change, so they are not
// cached. The upstream's answer is read and checked by upstream.Repository.Tags
// and encoded anew here, and the next page's Link is rebuilt from its
// cursor: an upstream (or wherever it redirected) can put nothing else in
// front of the client.
func (s *Server) serveTags(w http.ResponseWriter, r *http.Request) error {
	req, err := s.parse(r)
	if err != nil {
		return err
	}
	logAttrs(r.Context(), slog.String("upstream", req.repo.Upstream()), slog.String("repo", req.repo.Name()))
	in := r.URL.Query()
	n := -1
	if v := in.Get("n"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return errcode.New(http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "n must be a non-negative integer", nil)
		}
	}
	page, err := req.repo.Tags(r.Context(), n, upstream.CursorFrom(in))
	if err != nil {
		return err
	}
	body, err := json.Marshal(tagList{Name: req.repo.Name(), Tags: page.Tags})
	if err != nil {
		return fmt.Errorf("encode tags list: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if page.Next != (upstream.Cursor{}) {
		h.Set("Link", nextTagsLink(req.repo.Name(), page.Next, page.NextN, in.Get("ns")))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}
