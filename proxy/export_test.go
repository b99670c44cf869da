package proxy

import (
	"context"
	"net/http"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/normalize"
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

// CountPasswordChecks makes s count its bcrypt comparisons from now on,
// and returns the count. Call it before the requests it counts.
func (s *Server) CountPasswordChecks() *atomic.Int64 {
	n := new(atomic.Int64)
	compare := s.clientAuth.compare
	s.clientAuth.compare = func(hash, password []byte) error {
		n.Add(1)
		return compare(hash, password)
	}
	return n
}

// EngineSource is what the rule engine reads repo through for the client of
// r (the upstream its ns names, its credentials): the repository service's
// Source, as a pull by tag hands it to the engine.
func (s *Server) EngineSource(r *http.Request, repo string) (normalize.Source, error) {
	mirrored, err := s.repositoryFor(r, r.URL.Query().Get("ns"), repo)
	if err != nil {
		return nil, err
	}
	return mirrored.Source(), nil
}
