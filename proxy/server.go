package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/operator"
	"github.com/regnorm/regnorm/proxy/premade"
	"github.com/regnorm/regnorm/proxy/rewrites"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// Storage is what the Server itself asks of the cache: a blob's stat, to
// tell that the cache answers (/readyz). A repository's content is read
// through the repository service (proxy/mirror), which states its own
// needs, as do the fetcher, the engine, maintenance, the fleet and the
// rewrite report.
type Storage interface {
	StatBlob(ctx context.Context, dgst digest.Digest) (cache.BlobInfo, error)
}

// Options are what a Server is made of. cmd/proxy builds the parts (the
// repository service over the fetcher and the rule engine, the upstreams,
// the rewrite report, the fleet, cache maintenance) and hands them in; the
// Server routes requests to them, authenticates clients, and translates
// answers and errors.
type Options struct {
	// Mirror is every read of a repository's content.
	Mirror *mirror.Service
	// Upstreams are the configured upstreams; DefaultUpstream, one of
	// them, answers requests that carry no ns parameter.
	Upstreams       []*upstream.Registry
	DefaultUpstream string
	// Reports is the rewrite report, Fleet the nodes.
	Reports *rewrites.Report
	Fleet   *fleet.Fleet
	// Usage is the cache's size as last measured (the maintainer's), for
	// the status page.
	Usage func() *maintain.Usage
	// Storage is the cache, for /readyz.
	Storage Storage
	// Rules are the normalizations that are on, and which clients get
	// which; nil means ruleset.DefaultPolicy().
	Rules *ruleset.Policy
	// Deadline is how long a request by tag waits for normalization before
	// it gets 503 with Retry-After (the work goes on). Default
	// DefaultDeadline.
	Deadline time.Duration
	// PatientDeadline replaces Deadline for containerd versions that have no
	// response header timeout (before 2.3); see deadlineFor. Zero, or less
	// than Deadline, means Deadline.
	PatientDeadline time.Duration
	// ClientAuth, when set, makes clients authenticate; nil is open.
	ClientAuth *ClientAuth
	// AuthFailuresPerMinute bounds the failed authentication attempts of
	// one client address, password checks, wrong client tokens and wrong
	// node report tokens each on their own: that many at once, and that
	// many more a minute. Past it, 429 to wrong tokens and to credentials
	// that would cost a bcrypt comparison; a right token or a remembered
	// pair always gets in. Default DefaultAuthFailuresPerMinute.
	AuthFailuresPerMinute int
	// NodeReportTokens are the SHA-256 hashes of the tokens node-config's
	// reports (POST /api/v1/nodes) must carry, a credential only
	// node-config holds. With none, every report is refused.
	NodeReportTokens [][sha256.Size]byte
	// PremadeQueue, when above 0, turns pre-made variants on: after a
	// pull by tag, the variants the fleet's other containerd versions need
	// are made in the background (RunPremade), this many images waiting
	// at most. 0 is off.
	PremadeQueue int
	// Webhook, when set, turns the admission webhook on (WebhookHandler).
	Webhook *WebhookOptions
	// Clock is the time the server goes by (default the system clock).
	Clock   Clock
	Metrics *Metrics
	Logger  *slog.Logger
}

// WebhookOptions configure the admission webhook for Pods (proxy/webhook).
type WebhookOptions struct {
	// Clients are the containerd versions whose variants the webhook
	// writes (the union of their rule sets); none: the fleet's, as
	// node-config reported it (fleet.Fleet.ReportedRuleSets).
	Clients []containerdcfg.Version
	// Timeout bounds one admission's work on variants (webhook.Options).
	Timeout time.Duration
	// PinFor is how long a variant admitted in a Pod is kept from
	// eviction after its last admission.
	PinFor time.Duration
	// Pins is where the pins are written (the cache).
	Pins webhook.Pinner
}

// Server serves the read side of the OCI distribution API as a pull-through
// mirror of the configured upstreams.
type Server struct {
	storage         Storage
	upstreams       map[string]*upstream.Registry
	defaultUpstream string
	mirror          *mirror.Service // every read of a repository's content
	reports         *rewrites.Report
	fleet           *fleet.Fleet
	rules           ruleset.Policy
	deadline        time.Duration
	patientDeadline time.Duration
	status          *operator.Status // the status page and the rewrite report
	warm            *operator.Warm
	readiness       *operator.Readiness // upgrade readiness, its API and the status page's section
	premade         *premade.Maker      // nil when off
	webhook         *webhook.Webhook    // nil when off
	clientAuth      *clientAuth
	reportAttempts  *attemptLimiter // failed node report tokens by address
	reportTokens    [][sha256.Size]byte
	metrics         *Metrics
	log             *slog.Logger
}

// upstreamBudget is how many upstream requests one client request may cause
// (for warm, each image): manifest and HEAD requests, retries included, and
// one for each blob it reads that is not cached. An index pulled by tag
// costs its children, their configs and layers (of the platforms read): a
// few dozen for most images, 2 × 250 for a two-platform image with 250
// layers. Past it the request gets 503; what was fetched is cached, so a
// retry goes on from there.
const upstreamBudget = 512

// warmBudget is how many upstream requests one warm request may cause, all
// its images together: a few cold images' worth (each image at most
// upstreamBudget, as a pull), so one POST cannot make regnorm send up to
// MaxWarmImages × upstreamBudget.
const warmBudget = 4 * upstreamBudget

// New checks opts and builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Mirror == nil || opts.Reports == nil || opts.Fleet == nil || opts.Storage == nil || opts.Usage == nil {
		return nil, errors.New("proxy: the repository service, the rewrite report, the fleet, the cache and its usage are required")
	}
	if opts.Metrics == nil || opts.Logger == nil {
		return nil, errors.New("proxy: metrics and logger are required")
	}
	if opts.Deadline <= 0 {
		opts.Deadline = DefaultDeadline
	}
	if opts.PatientDeadline < opts.Deadline {
		opts.PatientDeadline = opts.Deadline
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	s := &Server{
		storage:         opts.Storage,
		upstreams:       map[string]*upstream.Registry{},
		defaultUpstream: opts.DefaultUpstream,
		mirror:          opts.Mirror,
		reports:         opts.Reports,
		fleet:           opts.Fleet,
		rules:           ruleset.DefaultPolicy(),
		deadline:        opts.Deadline,
		patientDeadline: opts.PatientDeadline,
		clientAuth:      newClientAuth(opts.ClientAuth, opts.Clock, opts.AuthFailuresPerMinute, opts.Metrics),
		reportAttempts:  newAttemptLimiter(opts.Clock, opts.AuthFailuresPerMinute, false),
		reportTokens:    opts.NodeReportTokens,
		metrics:         opts.Metrics,
		log:             opts.Logger,
	}
	if opts.Rules != nil {
		s.rules = *opts.Rules
	}
	for _, up := range opts.Upstreams {
		if up.Forwards() && opts.ClientAuth != nil {
			// Both read the Authorization header: a client's regnorm token
			// would go upstream.
			return nil, fmt.Errorf("proxy: upstream %q forwards credentials: client authentication cannot be on too", up.Name())
		}
		if _, dup := s.upstreams[up.Name()]; dup {
			return nil, fmt.Errorf("proxy: upstream %q configured twice", up.Name())
		}
		s.upstreams[up.Name()] = up
		opts.Metrics.preset(up.Name())
	}
	if _, ok := s.upstreams[opts.DefaultUpstream]; !ok {
		return nil, fmt.Errorf("proxy: default upstream %q is not configured", opts.DefaultUpstream)
	}
	s.status = &operator.Status{
		Report:    s.reports.List,
		Nodes:     s.fleet.View,
		Usage:     opts.Usage,
		Upstreams: map[string]operator.Upstream{},
		Rules:     s.rules,
		Started:   opts.Clock.Now(),
		Now:       opts.Clock.Now,
	}
	for name, up := range s.upstreams {
		s.status.Upstreams[name] = up
	}
	s.readiness = &operator.Readiness{
		Images: s.pulledImages,
		Check:  s.mirror.Readiness,
		Cached: s.mirror.ManifestCached,
		Rules:  s.rules,
		Now:    opts.Clock.Now,
	}
	s.status.Readiness = s.readiness
	s.warm = &operator.Warm{
		Repository:      s.repositoryFor,
		IsUpstream:      func(name string) bool { return s.upstreams[name] != nil },
		DefaultUpstream: s.defaultUpstream,
		Rules:           s.rules,
		Budget:          warmBudget,
		ImageBudget:     upstreamBudget,
		ReadJSON:        readJSON,
		Warmed:          s.readiness.Forget,
		Note:            logAttrs,
		Log:             opts.Logger,
	}
	if opts.PremadeQueue > 0 {
		var err error
		s.premade, err = premade.New(premade.Options{
			RuleSets: s.fleet.RuleSets,
			Verdict:  s.mirror.Verdict,
			Queue:    opts.PremadeQueue,
			Budget:   upstreamBudget, // a pull's, for each image
			Now:      opts.Clock.Now,
			Metrics:  opts.Metrics.Premade(),
			Log:      opts.Logger,
		})
		if err != nil {
			return nil, err
		}
	}
	if opts.Webhook != nil {
		var err error
		if s.webhook, err = s.newWebhook(*opts.Webhook, opts.Clock, opts.Metrics, opts.Logger); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newWebhook builds the admission webhook over the server's repositories,
// read as regnorm itself, and the configured versions, or the fleet's as
// node-config reported them: records every replica reads alike, never
// the User-Agents this process saw (another replica answers the same Pod).
func (s *Server) newWebhook(o WebhookOptions, clock Clock, metrics *Metrics, log *slog.Logger) (*webhook.Webhook, error) {
	ruleSets := s.fleet.ReportedRuleSets
	if len(o.Clients) > 0 {
		var sets []ruleset.Set
		for _, v := range o.Clients {
			sets = append(sets, s.rules.ForVersion(v).Rules)
		}
		ruleSets = func(context.Context) ([]ruleset.Set, error) { return sets, nil }
	}
	return webhook.New(webhook.Options{
		Repository: func(ns, name string) (webhook.Repository, error) {
			up, err := s.upstreamFor(ns)
			if err != nil {
				return nil, err
			}
			return s.mirror.Repository(up.Repository(name)), nil
		},
		IsUpstream:  func(name string) bool { return s.upstreams[name] != nil },
		RuleSets:    ruleSets,
		Pins:        o.Pins,
		Timeout:     o.Timeout,
		PinFor:      o.PinFor,
		Budget:      warmBudget, // a few cold images' worth, as a warm request
		ImageBudget: upstreamBudget,
		Now:         clock.Now,
		Metrics:     metrics.Webhook(),
		Log:         log.With("component", "webhook"),
	})
}

// WebhookHandler is the admission webhook's handler, for its own listener
// (webhook.listen); nil when it is off.
func (s *Server) WebhookHandler() http.Handler {
	if s.webhook == nil {
		return nil
	}
	return s.webhook.Handler()
}

// RunWebhook holds the admission webhook's background work (the pins it
// writes past an admission's deadline) until ctx ends, then stops it; it
// returns at once when the webhook is off.
func (s *Server) RunWebhook(ctx context.Context) {
	if s.webhook != nil {
		s.webhook.Run(ctx)
	}
}

// RunPremade makes the pre-made variants until ctx ends (Options.PremadeQueue);
// it returns at once when they are off.
func (s *Server) RunPremade(ctx context.Context) {
	if s.premade != nil {
		s.premade.Run(ctx)
	}
}

// Handler returns the HTTP handler. metrics, when not nil, is mounted at
// /metrics.
func (s *Server) Handler(metrics http.Handler) http.Handler {
	return s.routes(metrics)
}

func (s *Server) serveBase(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write([]byte("{}"))
	return err
}

func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) error {
	_, err := w.Write([]byte("ok\n"))
	return err
}

// serveReadyz reports ready when the cache storage answers.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	// Any digest will do: a clean "not found" proves the storage answers.
	_, err := s.storage.StatBlob(ctx, "sha256:0000000000000000000000000000000000000000000000000000000000000000")
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return errcode.New(http.StatusServiceUnavailable, errcode.Unavailable, "cache storage is not answering", err)
	}
	_, err = w.Write([]byte("ready\n"))
	return err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
