package operator

import (
	"bufio"
	"encoding/json"
	"net/http"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
)

// ServeNodes answers GET /api/v1/nodes. The list is written a node at a
// time: its size follows the number of nodes, its memory does not.
func (s *Status) ServeNodes(w http.ResponseWriter, r *http.Request) error {
	nodes, err := s.Nodes(r.Context())
	if err != nil {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "reading the node reports failed", err)
	}
	byVersion := map[string]int{}
	for _, n := range nodes {
		if !n.LastPull.IsZero() {
			byVersion[fleet.MinorVersion(n)]++
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff") // reporters' text, unescaped
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	bw.WriteString(`{"nodes":[`)
	for i, n := range nodes {
		if i > 0 {
			bw.WriteByte(',')
		}
		if err := enc.Encode(n); err != nil {
			return err
		}
	}
	bw.WriteString(`],"pullingByContainerd":`)
	if err := enc.Encode(byVersion); err != nil {
		return err
	}
	bw.WriteString("}\n")
	return bw.Flush()
}
