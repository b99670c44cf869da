package proxy

import (
	"net/http"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/normalize"
)

// ParseImage is parseImage, for a table test.
func (s *Server) ParseImage(image string) (upstream, repo, tag string, dgst digest.Digest, err error) {
	return s.warm.ParseImage(image)
}

// WarmBudget is warmBudget.
const WarmBudget = warmBudget

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

// HoldPasswordChecks makes s's bcrypt comparisons wait until release is
// called, and counts them: running is how many are in a comparison now,
// most the most there were at once. Call it before the requests it holds.
func (s *Server) HoldPasswordChecks() (running, most func() int64, release func()) {
	var now, peak atomic.Int64
	held := make(chan struct{})
	var once sync.Once
	compare := s.clientAuth.compare
	s.clientAuth.compare = func(hash, password []byte) error {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-held
		return compare(hash, password)
	}
	return now.Load, peak.Load, func() { once.Do(func() { close(held) }) }
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
