package proxy

import (
	"context"
	"log/slog"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/rewrites"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// What a manifest answer tells the rewrite report (proxy/rewrites).

// answer is req's answer with original, to client, as the report records it.
func answer(req distRequest, original cache.Manifest, client ruleset.Client) rewrites.Answer {
	return rewrites.Answer{Upstream: req.repo.Upstream(), Repository: req.repo.Name(), Tag: req.tag, Original: original, Client: client}
}

// noteDigestPull handles a pull by digest: it always gets the bytes it
// names (containerd verifies them). If those are an original that regnorm
// normalizes, the pull cannot be fixed: count it, say which digest to pin
// instead, and put it in the report. Only a verdict already known counts:
// a pull by digest never makes regnorm download what nobody asked for (for
// an index, that would be every platform's layers).
// It reports whether the pull was one of an original that regnorm
// normalizes for this client's rules: a node that needs no rule pulls the
// original by design.
func (s *Server) noteDigestPull(ctx context.Context, req distRequest, m cache.Manifest, client ruleset.Client) bool {
	n, ok := s.mirror.Verdict(ctx, m, client.Rules)
	if !ok || n.Normalized == "" {
		return false
	}
	s.metrics.unnormalizedPulls.Inc()
	s.reports.PulledOriginal(answer(req, m, client), n)
	s.log.Warn("pull by an original digest gets the unnormalized image; pin the normalized digest instead",
		"upstream", req.repo.Upstream(), "repo", req.repo.Name(), "digest", m.Digest, "normalized", n.Normalized)
	logAttrs(ctx, slog.Bool("unnormalized", true), slog.String("normalized", n.Normalized.String()))
	return true
}

// pulledImages are the images regnorm answered that the report may show,
// as upgrade readiness lists them (rewrites.Report.Originals).
func (s *Server) pulledImages(ctx context.Context) ([]operator.PulledImage, int, error) {
	originals, hidden, err := s.reports.Originals(ctx)
	if err != nil {
		return nil, 0, err
	}
	out := make([]operator.PulledImage, len(originals))
	for i, o := range originals {
		out[i] = operator.PulledImage{Upstream: o.Upstream, Repository: o.Repository, Original: o.Digest, Tags: o.Tags}
	}
	return out, hidden, nil
}
