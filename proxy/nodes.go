package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
)

// Node-config's reports reach the fleet (proxy/fleet) through here: the
// server authenticates the reporter and translates the fleet's refusals.

// reportChallenge is sent with a 401 to a node report.
const reportChallenge = `Bearer realm="regnorm node reports"`

// reportersOnly lets through the requests that carry one of the node
// report tokens, which only node-config holds: the fleet view tells
// operators what to change on their nodes, so no other client may write
// it. Without a token configured, no report is taken. A right token always
// gets in (it costs no bcrypt, and is too long to guess); a wrong one
// counts against the address's allowance of report failures, which is not
// that of client authentication: a node's failing reports do not stop its
// pulls, nor failing pulls its reports.
func (s *Server) reportersOnly(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if len(s.reportTokens) == 0 {
			return errcode.New(http.StatusForbidden, errcode.Denied, "node reports are off: regnorm has no report token (nodes.reportTokenFile)", nil)
		}
		tok, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if tok = strings.TrimSpace(tok); bearer && tokenIn(s.reportTokens, tok) {
			return h(w, r)
		}
		if tok != "" { // a guess; no credentials is none
			if err := s.reportAttempts.fail(attemptKey(r)); err != nil {
				return err
			}
		}
		e := errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "a node report needs the report token (node-config --report-token-file)", nil)
		e.Challenge = reportChallenge
		return e
	}
}

// receiveNodeReport answers POST /api/v1/nodes (behind reportersOnly):
// node-config's report of one node, for the fleet (fleet.Fleet.Receive).
func (s *Server) receiveNodeReport(w http.ResponseWriter, r *http.Request) error {
	var rep cache.NodeReport
	if err := readJSON(w, r, fleet.MaxReport, &rep, true, "a node report (regnorm node-config sends it)"); err != nil {
		return err
	}
	switch err := s.fleet.Receive(r.Context(), rep); {
	case errors.Is(err, fleet.ErrInvalidReport):
		return errcode.New(http.StatusBadRequest, errcode.Unsupported, err.Error(), nil)
	case errors.Is(err, fleet.ErrTooManyNodes):
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, err.Error(), nil)
	case err != nil:
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "recording the node report failed", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ReportNode sends node-config's report of one node to regnorm's fleet
// view.
func (c Client) ReportNode(ctx context.Context, rep cache.NodeReport) error {
	if err := c.post(ctx, "/api/v1/nodes", rep, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("report node: %w", err)
	}
	return nil
}
