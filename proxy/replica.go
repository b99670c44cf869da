package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// routeReplica is the metrics' route label of what replicas ask.
const routeReplica = "replica"

// maxVariantWait bounds how long an owner works on a variant before it
// answers that it is still at work (the asker's client waits no longer).
const maxVariantWait = 10 * time.Minute

// ReplicaHandler serves what the other replicas of the cache ask of this
// one as the owner of a blob, a manifest or a variant (proxy/replicas), on
// the replicas' own listener, to replicas only. The work is done as a
// client of this mirror with the upstream's own credentials would have it
// done, through the same repository service.
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
}

// send answers status with body, whole and signed.
func (a replicaAnswer) send(status int, body []byte) {
	h := a.w.Header()
	if status != http.StatusNoContent {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	a.set.SignAnswer(h, a.reqMAC, status, body)
	a.w.WriteHeader(status)
	a.w.Write(body)
}

type replicaHandler func(ctx context.Context, a replicaAnswer, repo *mirror.Repository, q url.Values) error

// replicaRoute checks that a replica asks, and for which repository of
// which configured upstream, and answers its error signed.
func (s *Server) replicaRoute(set *replicas.Set, kind string, h replicaHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqMAC, err := set.Verify(r)
		if err != nil {
			logAttrs(r.Context(), slog.String("error", err.Error()))
			writeError(w, r, errcode.New(http.StatusUnauthorized, errcode.Unauthorized, "replicas only", err))
			return
		}
		a := replicaAnswer{w: w, set: set, reqMAC: reqMAC}
		ctx := upstream.WithBudget(r.Context(), upstreamBudget)
		q := r.URL.Query()
		repo, err := s.replicaRepository(q.Get("upstream"), q.Get("repo"))
		if err == nil {
			logAttrs(ctx, slog.String("upstream", repo.Upstream()), slog.String("repo", repo.Name()), slog.String("kind", kind))
			err = h(ctx, a, repo.ForReplica(kind), q)
		}
		set.Served(kind, err)
		if err == nil {
			return
		}
		if rw := w.(*responseWriter); rw.status != 0 {
			// The body is cut short: the asker goes on from the upstream.
			logAttrs(ctx, slog.String("error", err.Error()))
			return
		}
		e, body := errorAnswer(w.Header(), err)
		logAttrs(ctx, slog.String("error", e.Error()))
		a.send(e.Status, body)
	})
}

// replicaRepository is name on the upstream ns, read with the upstream's
// own credentials. An upstream with forwarded credentials is never asked
// for: each client's answer is its own.
func (s *Server) replicaRepository(ns, name string) (*mirror.Repository, error) {
	up, ok := s.upstreams[ns]
	if !ok {
		return nil, errcode.New(http.StatusNotFound, errcode.NameUnknown, fmt.Sprintf("upstream registry %q is not configured on this replica", ns), nil)
	}
	if up.Forwards() {
		return nil, errcode.New(http.StatusForbidden, errcode.Denied, "an upstream with forwarded credentials is not shared between replicas", nil)
	}
	if problem := nameProblem(name); problem != "" {
		return nil, errcode.New(http.StatusBadRequest, errcode.NameInvalid, problem, nil)
	}
	return s.mirror.Repository(up.Repository(name)), nil
}

func digestParam(q url.Values) (digest.Digest, error) {
	v := ""
	if d := q["digest"]; len(d) == 1 {
		v = d[0]
	}
	dgst, err := digest.Parse(v)
	if err != nil {
		return "", errcode.New(http.StatusBadRequest, errcode.DigestInvalid, "invalid digest", err)
	}
	return dgst, nil
}

// serveReplicaBlob sends a blob as it is read: from the cache, or from the
// download this replica runs of it (its own clients' too).
func (s *Server) serveReplicaBlob(ctx context.Context, a replicaAnswer, repo *mirror.Repository, q url.Values) error {
	dgst, err := digestParam(q)
	if err != nil {
		return err
	}
	b, err := repo.OpenBlob(ctx, dgst, 0)
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
	h.Set("Docker-Content-Digest", dgst.String())
	a.set.SignAnswer(h, a.reqMAC, http.StatusOK, nil)
	a.w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(a.w, b); err != nil {
		return err
	}
	return b.Err()
}

// serveReplicaManifest sends a manifest by tag or digest as this replica's
// repository answers it (fetching and caching it, or from the cache).
func (s *Server) serveReplicaManifest(ctx context.Context, a replicaAnswer, repo *mirror.Repository, q url.Values) error {
	ref := ""
	if r := q["ref"]; len(r) == 1 {
		ref = r[0]
	}
	if !strings.Contains(ref, ":") && !anchoredTag.MatchString(ref) {
		return errcode.New(http.StatusBadRequest, errcode.TagInvalid, "invalid reference", nil)
	}
	m, err := repo.Manifest(ctx, ref, parseAccept(q["accept"]))
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
// work).
func (s *Server) serveReplicaVariant(ctx context.Context, a replicaAnswer, repo *mirror.Repository, q url.Values) error {
	dgst, err := digestParam(q)
	if err != nil {
		return err
	}
	var names []string
	if v := q.Get("rules"); v != "" {
		names = strings.Split(v, ",")
	}
	rules, err := ruleset.Parse(names)
	if err != nil {
		return errcode.New(http.StatusBadRequest, errcode.Unsupported, "unknown rule", err)
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait <= 0 || wait > maxVariantWait {
			return errcode.New(http.StatusBadRequest, errcode.Unsupported, "invalid wait", errors.Join(err, fmt.Errorf("wait %q", v)))
		}
	}
	m, err := repo.Manifest(ctx, dgst.String(), nil)
	if err != nil {
		return err
	}
	if _, err := repo.Variant(ctx, m.Manifest, s.rules.Enabled.Intersect(rules), wait); err != nil {
		return err
	}
	a.send(http.StatusNoContent, []byte{})
	return nil
}
