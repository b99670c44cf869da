package proxy

import (
	"context"

	digest "github.com/opencontainers/go-digest"
)

// MaintainOnce runs one cache maintenance pass, for tests that count what
// it costs.
func (s *Server) MaintainOnce(ctx context.Context) { s.maintainer.Once(ctx) }

// FlushReport writes the pending report counts to the store.
func (s *Server) FlushReport(ctx context.Context) error { return s.reports.flush(ctx) }

// ParseImage is parseImage, for a table test.
func (s *Server) ParseImage(image string) (upstream, repo, tag string, dgst digest.Digest, err error) {
	return s.parseImage(image)
}

// CountNodes sets regnorm_nodes now.
func (s *Server) CountNodes() { s.countNodesOnce() }

// PruneNodeReports runs the background pass that forgets nodes' reports.
func (s *Server) PruneNodeReports(ctx context.Context) { s.pruneNodeReports(ctx) }

// MaxNodes is maxNodes.
const MaxNodes = maxNodes

// UpstreamBudget is upstreamBudget.
const UpstreamBudget = upstreamBudget
