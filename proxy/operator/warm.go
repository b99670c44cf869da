package operator

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/imageref"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// WarmRequest is the body of POST /api/v1/warm.
type WarmRequest struct {
	// Images are references such as docker.io/library/redis:2.8.23; the
	// registry must be a configured upstream.
	Images []string `json:"images"`
	// Clients are containerd versions ("1.6.8", or "2.1" for 2.1.0): each
	// image is warmed for the rule set of each, one variant per distinct
	// set. None warms the variant of a client that names no version.
	Clients []string `json:"clients,omitempty"`
}

// WarmResult is what warming one image did.
type WarmResult struct {
	Image            string         `json:"image"`
	OriginalDigest   string         `json:"originalDigest,omitempty"`
	NormalizedDigest string         `json:"normalizedDigest,omitempty"`
	Changes          []cache.Change `json:"changes,omitempty"`
	// Variants are filled when the request named clients: what each of
	// them gets. NormalizedDigest and Changes are then empty.
	Variants []WarmVariant `json:"variants,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// WarmVariant is the variant of an image for the clients that share a rule
// set.
type WarmVariant struct {
	Clients []string `json:"clients"`
	Rules   string   `json:"rules"`
	// NormalizedDigest is empty when these clients get the original.
	NormalizedDigest string         `json:"normalizedDigest,omitempty"`
	Changes          []cache.Change `json:"changes,omitempty"`
}

// MaxWarmImages is how many images one warm request may name.
const MaxWarmImages = 1000

const (
	maxWarmBody     = 1 << 20
	maxWarmClients  = 32
	warmConcurrency = 2
)

// Warm is POST /api/v1/warm. It is a client of the repository service: it
// reaches a repository as the server hands it one, so a warm is admitted
// as a pull of the same client would be.
type Warm struct {
	// Repository is the repository name on upstream ns, read as the client
	// of r.
	Repository func(r *http.Request, ns, name string) (*mirror.Repository, error)
	// IsUpstream tells a configured upstream's name; DefaultUpstream is
	// where a name without one is.
	IsUpstream      func(name string) bool
	DefaultUpstream string
	Rules           ruleset.Policy
	// Budget is how many upstream requests one warm request may cause, all
	// its images together, and ImageBudget how many one image may (as a
	// pull). Images past Budget get an error of their own; what was fetched
	// is kept, so the same warm again goes on from there.
	Budget, ImageBudget int
	// ReadJSON reads the request's body, the server's one way of taking
	// one.
	ReadJSON func(w http.ResponseWriter, r *http.Request, limit int64, v any, strict bool, shape string) error
	// Warmed, when set, is told when a warm request is done: what
	// readiness says may have changed (Readiness.Forget).
	Warmed func()
	// Note adds attributes to the request's access-log line.
	Note func(ctx context.Context, attrs ...slog.Attr)
	Log  *slog.Logger
}

// Serve normalizes images ahead of time, waiting as long as it takes, so
// that nodes asking later get the answer at once.
func (s *Warm) Serve(w http.ResponseWriter, r *http.Request) error {
	var req WarmRequest
	if err := s.ReadJSON(w, r, maxWarmBody, &req, false, `{"images": [...]}`); err != nil {
		return err
	}
	if len(req.Images) == 0 || len(req.Images) > MaxWarmImages {
		return errcode.New(http.StatusBadRequest, errcode.Unsupported, fmt.Sprintf("give 1 to %d images", MaxWarmImages), nil)
	}
	groups, err := s.warmGroups(req.Clients)
	if err != nil {
		return err
	}
	// One budget for the whole request, in place of a pull's.
	r = r.WithContext(upstream.WithBudget(r.Context(), s.Budget))
	results := make([]WarmResult, len(req.Images))
	var mu sync.Mutex
	g := errgroup.Group{}
	g.SetLimit(warmConcurrency)
	for i, image := range req.Images {
		g.Go(func() error {
			res := s.warm(r, image, groups)
			mu.Lock()
			results[i] = res
			mu.Unlock()
			return nil
		})
	}
	g.Wait()
	if s.Warmed != nil {
		s.Warmed()
	}
	w.Header().Set("Content-Type", "application/json")
	return WriteJSON(w, map[string]any{"results": results})
}

// warmGroup is the client versions that share one rule set.
type warmGroup struct {
	clients []string
	rules   ruleset.Set
}

// warmGroups groups the named containerd versions by rule set; none is the
// one group of a client that names no version.
func (s *Warm) warmGroups(clients []string) ([]warmGroup, error) {
	if len(clients) == 0 {
		return []warmGroup{{rules: s.Rules.ForUserAgent("").Rules}}, nil
	}
	if len(clients) > maxWarmClients {
		return nil, errcode.New(http.StatusBadRequest, errcode.Unsupported, fmt.Sprintf("give at most %d clients", maxWarmClients), nil)
	}
	var groups []warmGroup
	for _, c := range clients {
		v, err := ParseContainerd(c)
		if err != nil {
			return nil, errcode.New(http.StatusBadRequest, errcode.Unsupported, fmt.Sprintf("client %q is not a containerd version such as 1.6.8", c), nil)
		}
		client := s.Rules.ForVersion(v)
		i := slices.IndexFunc(groups, func(g warmGroup) bool { return g.rules == client.Rules })
		if i < 0 {
			groups, i = append(groups, warmGroup{rules: client.Rules}), len(groups)
		}
		if !slices.Contains(groups[i].clients, client.Version) {
			groups[i].clients = append(groups[i].clients, client.Version)
		}
	}
	return groups, nil
}

// warm normalizes one image for each group of clients, as the client of r,
// who must be allowed to pull it: with forwarded credentials, its own
// credentials are asked, as for a pull.
func (s *Warm) warm(r *http.Request, image string, groups []warmGroup) WarmResult {
	// Each image costs at most a pull, and all of them at most the
	// request's budget.
	ctx := upstream.WithShare(r.Context(), s.ImageBudget)
	res := WarmResult{Image: image}
	fail := func(err error) WarmResult {
		s.Log.Warn("warming an image failed", "image", image, "error", err)
		res.Error = errcode.PublicMessage(err)
		return res
	}
	upName, repo, tag, dgst, err := s.ParseImage(image)
	if err != nil {
		return fail(err)
	}
	repository, err := s.Repository(r, upName, repo)
	if err != nil {
		return fail(err)
	}
	ref := tag
	if dgst != "" {
		ref = dgst.String()
	}
	m, err := repository.Manifest(ctx, ref, nil)
	if err != nil {
		return fail(err)
	}
	if m.Stale {
		s.Note(ctx, slog.Bool("stale", true))
	}
	res.OriginalDigest = m.Digest.String()
	for _, g := range applicableGroups(m.Manifest, groups) {
		n, err := repository.Variant(ctx, m.Manifest, g.rules, 0)
		if err != nil {
			return fail(err)
		}
		v := WarmVariant{Clients: g.clients, Rules: g.rules.Key()}
		if n.Changed() {
			v.NormalizedDigest, v.Changes = n.Verdict.Normalized.String(), n.Verdict.Changes
		}
		if g.clients == nil {
			res.NormalizedDigest, res.Changes = v.NormalizedDigest, v.Changes
		} else {
			res.Variants = append(res.Variants, v)
		}
	}
	return res
}

// applicableGroups regroups clients by the rules that apply to m: clients
// whose rule sets differ only in rules that cannot touch m get one variant.
func applicableGroups(m cache.Manifest, groups []warmGroup) []warmGroup {
	var out []warmGroup
	for _, g := range groups {
		rules := normalize.Applicable(m, g.rules)
		i := slices.IndexFunc(out, func(o warmGroup) bool { return o.rules == rules })
		if i < 0 {
			out = append(out, warmGroup{rules: rules, clients: g.clients})
			continue
		}
		out[i].clients = append(slices.Clip(out[i].clients), g.clients...)
	}
	return out
}

// ParseImage reads an image reference as warm takes it. Its first
// component names the registry when it is a configured upstream, or looks
// like a host (a dot, a port, localhost); otherwise the name is on the
// default upstream ("redis:2.8.23", "team/app"). On docker.io a one-part name
// is an official image (library/redis).
func (s *Warm) ParseImage(image string) (upstream, repo, tag string, dgst digest.Digest, err error) {
	img, err := imageref.Parse(image, s.DefaultUpstream, func(first string) bool {
		return s.IsUpstream(first) || imageref.LooksLikeHost(first)
	})
	if err != nil {
		return "", "", "", "", errcode.New(http.StatusBadRequest, errcode.NameInvalid, err.Error(), nil)
	}
	if img.Digest != "" {
		return img.Registry, img.Repository, "", img.Digest, nil
	}
	return img.Registry, img.Repository, img.Tag, "", nil
}
