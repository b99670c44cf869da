package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// routeReplica is the metrics' route label of what replicas ask.
const routeReplica = "replica"

// ReplicaHandler serves what the other replicas of the cache ask of this
// one as the owner of a blob, a manifest or a variant (proxy/replicas), on
// the replicas' own listener, to replicas only. The work is done as a
// client of this mirror with the upstream's own credentials would have it
// done, through the same repository service, within what is left of the
// asking request's upstream budget. What this replica cannot answer for
// the asker (an upstream configured otherwise here, a rule not on here, a
// malformed ask) is answered 421: the asker does the work itself.
func (s *Server) ReplicaHandler(set *replicas.Set) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+replicas.BlobPath, s.replicaRoute(set, replicas.KindBlob, s.serveReplicaBlob))
	mux.Handle("GET "+replicas.ManifestPath, s.replicaRoute(set, replicas.KindManifest, s.serveReplicaManifest))
	mux.Handle("POST "+replicas.VariantPath, s.replicaRoute(set, replicas.KindVariant, s.serveReplicaVariant))
	return s.accessLog(routeReplica, mux)
}

// replicaAnswer is a signed answer to a replica.
type replicaAnswer struct {
	w      http.ResponseWriter
	set    *replicas.Set
	reqMAC string
	sent   bool // headers are out
}

// send answers status with body, whole and signed.
func (a *replicaAnswer) send(status int, body []byte) {
	h := a.w.Header()
	if status != http.StatusNoContent {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	a.set.SignAnswer(h, a.reqMAC, status, body)
	a.sent = true
	a.w.WriteHeader(status)
	a.w.Write(body)
}

type replicaHandler func(ctx context.Context, a *replicaAnswer, repo *mirror.Repository, ask replicas.Ask) error

// replicaRoute checks that a replica asks, and for which repository of an
// upstream configured here as on the asker, and answers its error signed.
func (s *Server) replicaRoute(set *replicas.Set, kind string, h replicaHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqMAC, err := set.Verify(r)
		if err != nil {
			logAttrs(r.Context(), slog.String("error", err.Error()))
			writeError(w, r, errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "replicas only", err))
			return
		}
		a := &replicaAnswer{w: w, set: set, reqMAC: reqMAC}
		ctx := r.Context()
		ask, err := replicas.ParseAsk(r, kind)
		var repo *mirror.Repository
		if err == nil {
			repo, err = s.replicaRepository(set, ask)
		}
		if err == nil {
			ctx = upstream.WithBudget(ctx, min(ask.Budget, upstreamBudget))
			logAttrs(ctx, slog.String("upstream", repo.Upstream()), slog.String("repo", repo.Name()), slog.String("kind", kind))
			err = h(ctx, a, repo.ForReplica(kind), ask)
		}
		set.Served(kind, err)
		if err == nil {
			return
		}
		logAttrs(ctx, slog.String("error", err.Error()))
		if a.sent {
			// The body is cut short: the asker goes on from the upstream.
			return
		}
		e, body := errorAnswer(w.Header(), err)
		a.send(e.Status, body)
	})
}

// replicaRepository is the repository ask names, read with the upstream's
// own credentials: only of an upstream configured here as on the asker,
// and never one with forwarded credentials (each client's answer is its
// own).
func (s *Server) replicaRepository(set *replicas.Set, ask replicas.Ask) (*mirror.Repository, error) {
	up, ok := s.upstreams[ask.Upstream]
	switch {
	case !ok:
		return nil, replicas.Misdirected("upstream " + strconv.Quote(ask.Upstream) + " is not configured on this replica")
	case up.Forwards():
		return nil, replicas.Misdirected("an upstream with forwarded credentials is not shared between replicas")
	case !set.SameConfig(ask, up.Fingerprint()):
		return nil, replicas.Misdirected("upstream " + strconv.Quote(ask.Upstream) + " is configured otherwise on this replica")
	}
	if problem := nameProblem(ask.Repo); problem != "" {
		return nil, replicas.Misdirected(problem)
	}
	return s.mirror.Repository(up.Repository(ask.Repo)), nil
}

// serveReplicaBlob sends a blob as it is read: from the cache, or from the
// download this replica runs of it (its own clients' too).
func (s *Server) serveReplicaBlob(ctx context.Context, a *replicaAnswer, repo *mirror.Repository, ask replicas.Ask) error {
	b, err := repo.OpenBlob(ctx, ask.Digest, 0)
	if err != nil {
		return err
	}
	defer b.Close()
	size, err := b.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = b.Seek(0, io.SeekStart)
	}
	if err != nil {
		return errcode.New(http.StatusBadGateway, errcode.BlobUnknown, "blob size unknown", err)
	}
	h := a.w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Docker-Content-Digest", ask.Digest.String())
	a.set.SignAnswer(h, a.reqMAC, http.StatusOK, nil)
	a.sent = true
	a.w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(a.w, b); err != nil {
		return err
	}
	return b.Err()
}

// serveReplicaManifest sends a manifest by tag or digest as this replica's
// repository answers it (fetching and caching it, or from the cache).
func (s *Server) serveReplicaManifest(ctx context.Context, a *replicaAnswer, repo *mirror.Repository, ask replicas.Ask) error {
	if !strings.Contains(ask.Ref, ":") && !anchoredTag.MatchString(ask.Ref) {
		return replicas.Misdirected("invalid reference")
	}
	m, err := repo.Manifest(ctx, ask.Ref, parseAccept(ask.Accept))
	if err != nil {
		return err
	}
	h := a.w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	if m.Stale {
		h.Set(replicas.StaleHeader, "true")
	}
	a.send(http.StatusOK, m.Content)
	return nil
}

// serveReplicaVariant makes the variant of an original for a rule set, and
// answers once it is in the cache (or, with a wait, that it is still at
// work). A rule set this replica would not make is not its to answer.
func (s *Server) serveReplicaVariant(ctx context.Context, a *replicaAnswer, repo *mirror.Repository, ask replicas.Ask) error {
	var names []string
	if ask.Rules != "" {
		names = strings.Split(ask.Rules, ",")
	}
	rules, err := ruleset.Parse(names)
	if err != nil || s.rules.Enabled.Intersect(rules) != rules {
		return replicas.Misdirected("rules " + strconv.Quote(ask.Rules) + " are not all on this replica")
	}
	m, err := repo.Manifest(ctx, ask.Digest.String(), nil)
	if err != nil {
		return err
	}
	if _, err := repo.Variant(ctx, m.Manifest, rules, ask.Wait); err != nil {
		return err
	}
	a.send(http.StatusNoContent, []byte{})
	return nil
}
