package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/flight"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/errcode"
	"github.com/regnorm/regnorm/proxy/maintain"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Store is what the proxy needs from the cache: the rule engine's part,
// and what serving, the report, the fleet view and maintenance use.
type Store interface {
	normalize.Store
	cache.BlobProvider
	cache.BlobIngester
	cache.ManifestStore
	cache.TagStore
	cache.LinkStore
	cache.ReportStore
	cache.NodeStore
	maintain.Store
}

// Options configure a Server. cmd/proxy builds them from the configuration.
type Options struct {
	Store     Store
	Upstreams []upstream.Config
	// DefaultUpstream answers requests that carry no ns parameter.
	DefaultUpstream string
	// TagTTL is how long a tag is served from cache before upstream is asked
	// again.
	TagTTL time.Duration
	// SpoolDir holds the unlinked files that let many clients read a blob
	// while it downloads. Empty means os.TempDir().
	SpoolDir string
	// FetchTimeout bounds one blob download from upstream, however many
	// clients are waiting for it. Default DefaultFetchTimeout.
	FetchTimeout time.Duration
	// StallTimeout abandons an upstream response that sends nothing for
	// this long: headers, or the next bytes of a body. Default
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// Retry bounds retries of failed upstream requests; the zero value
	// means DefaultRetryPolicy().
	Retry upstream.RetryPolicy
	// Rules are the normalizations that are on, and which clients get
	// which; nil means ruleset.DefaultPolicy().
	Rules *ruleset.Policy
	// Platforms are the index children normalization reads; nil means
	// DefaultPlatforms().
	Platforms *normalize.Platforms
	// Deadline is how long a request by tag waits for normalization before
	// it gets 503 with Retry-After (the work goes on). Default
	// DefaultDeadline.
	Deadline time.Duration
	// PatientDeadline replaces Deadline for containerd versions that have no
	// response header timeout (before 2.3); see deadlineFor. Zero, or less
	// than Deadline, means Deadline.
	PatientDeadline time.Duration
	// MaxLayerSize bounds how far a layer is decompressed to scan it: one
	// that expands further (a decompression bomb) is served untouched.
	// Default DefaultMaxLayerSize.
	MaxLayerSize int64
	// MaxBlobSize bounds a blob downloaded from an upstream whose own
	// MaxBlobSize is 0 (default DefaultMaxBlobSize): one announced larger is
	// refused, one that sends more is stopped, and nothing of it is cached.
	MaxBlobSize int64
	// MaxUpstreamBodyMemory bounds the memory upstream answers read whole
	// (manifests, tag lists, token answers, error bodies) hold while they
	// are read, all upstreams together; each may hold three quarters of it
	// (all, with one upstream). Past it a request gets 503 with
	// Retry-After. Default upstream.DefaultBodyMemory.
	MaxUpstreamBodyMemory int64
	// MaxZstdWindow bounds the window of a zstd layer's frames, and so the
	// memory its decoder takes: a layer that declares more is served
	// untouched. Default rewrite.DefaultZstdWindow (8 MiB).
	MaxZstdWindow int64
	// LayerWork bounds the layer scans, repackagings and recompressions
	// that run and wait at once; zero fields take
	// normalize.DefaultWorkLimits().
	LayerWork normalize.WorkLimits
	// ClientAuth, when set, makes clients authenticate; nil is open.
	ClientAuth *ClientAuth
	// AuthFailuresPerMinute bounds the failed authentication attempts of
	// one client address, client credentials and node report tokens each
	// on their own: that many at once, and that many more a minute. Past
	// it, 429 to wrong credentials and to those that would cost a bcrypt
	// comparison; a right token or a remembered pair always gets in.
	// Default DefaultAuthFailuresPerMinute.
	AuthFailuresPerMinute int
	// NodeReportTokens are the SHA-256 hashes of the tokens node-config's
	// reports (POST /api/v1/nodes) must carry, a credential only
	// node-config holds. With none, every report is refused.
	NodeReportTokens [][sha256.Size]byte
	// NodeHostsDir is the directory node-config writes hosts.toml files to
	// (its --config-path). A report about another is refused, and the lines
	// the fleet view says to add to containerd's configuration name this
	// one, never a path a report brought. Default /etc/containerd/certs.d.
	NodeHostsDir string
	// Eviction bounds the cache; the zero policy keeps everything.
	Eviction cache.EvictionPolicy
	// MaintenanceInterval is how often the cache is measured, kept within
	// Eviction and cleaned of what dead writers left (default
	// DefaultMaintenanceInterval). Each pass lists the blobs: make it long
	// on S3, where listing costs.
	MaintenanceInterval time.Duration
	// Fetches bound the downloads from upstream; zero fields take
	// blobfetch.DefaultLimits().
	Fetches blobfetch.Limits
	// ForgetNodesAfter drops a node from the fleet view when it has neither
	// pulled nor been reported on for this long (default
	// DefaultForgetNodesAfter).
	ForgetNodesAfter time.Duration
	// Clock is the time the server goes by (default the system clock).
	Clock   Clock
	Metrics *Metrics
	Logger  *slog.Logger
}

// Server serves the read side of the OCI distribution API as a pull-through
// mirror of the configured upstreams.
type Server struct {
	store            Store
	upstreams        map[string]*upstream.Registry
	defaultUpstream  string
	tagTTL           time.Duration
	fetches          *blobfetch.Fetcher
	maintainer       *maintain.Maintainer
	manifests        flight.Group[any] // upstream manifest fetches, ended a grace after the last client waiting has gone
	engine           *normalize.Engine
	changedOriginals *lru.Cache[digest.Digest, bool] // whether every enabled rule changes an original, for the report
	lookups          chan struct{}                   // noteOriginalServed's, at most originalLookups
	reports          *reporter
	rules            ruleset.Policy
	started          time.Time
	deadline         time.Duration
	patientDeadline  time.Duration
	links            *linkMemory
	fleet            *fleet
	nodeCount        sync.Mutex // one count of regnorm_nodes at a time
	clientAuth       *clientAuth
	reportAttempts   *attemptLimiter // failed node report tokens by address
	reportTokens     [][sha256.Size]byte
	hostsDir         string
	metrics          *Metrics
	log              *slog.Logger
	clock            Clock
}

// upstreamBudget is how many upstream requests one client request may cause
// (for warm, each image): manifest and HEAD requests, retries included, and
// one for each blob it reads that is not cached. An index pulled by tag
// costs its children, their configs and layers (of the platforms read): a
// few dozen for most images, 2 × 250 for a two-platform image with 250
// layers. Past it the request gets 503; what was fetched is cached, so a
// retry goes on from there.
const upstreamBudget = 512

// New validates opts and builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("proxy: no store")
	}
	if opts.Metrics == nil || opts.Logger == nil {
		return nil, errors.New("proxy: metrics and logger are required")
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = os.TempDir()
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.MaxLayerSize <= 0 {
		opts.MaxLayerSize = DefaultMaxLayerSize
	}
	if opts.MaxBlobSize <= 0 {
		opts.MaxBlobSize = DefaultMaxBlobSize
	}
	if opts.MaxUpstreamBodyMemory <= 0 {
		opts.MaxUpstreamBodyMemory = upstream.DefaultBodyMemory
	}
	if opts.Retry == (upstream.RetryPolicy{}) {
		opts.Retry = upstream.DefaultRetryPolicy()
	}
	if opts.Deadline <= 0 {
		opts.Deadline = DefaultDeadline
	}
	if opts.PatientDeadline < opts.Deadline {
		opts.PatientDeadline = opts.Deadline
	}
	if opts.MaintenanceInterval <= 0 {
		opts.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.ForgetNodesAfter <= 0 {
		opts.ForgetNodesAfter = DefaultForgetNodesAfter
	}
	if opts.NodeHostsDir == "" {
		opts.NodeHostsDir = DefaultHostsDir
	}
	if !ValidHostsDir(opts.NodeHostsDir) {
		return nil, fmt.Errorf("proxy: hosts directory %q is not a clean absolute path without ':' or quotes", opts.NodeHostsDir)
	}
	s := &Server{
		store:           opts.Store,
		upstreams:       map[string]*upstream.Registry{},
		defaultUpstream: opts.DefaultUpstream,
		tagTTL:          opts.TagTTL,
		metrics:         opts.Metrics,
		log:             opts.Logger,
		clock:           opts.Clock,
		reports:         newReporter(opts.Store, opts.Clock, opts.Logger),
		rules:           ruleset.DefaultPolicy(),
		started:         opts.Clock.Now(),
		deadline:        opts.Deadline,
		patientDeadline: opts.PatientDeadline,
		links:           newLinkMemory(),
		fleet:           newFleet(opts.Clock, opts.ForgetNodesAfter),
		clientAuth:      newClientAuth(opts.ClientAuth, newAttemptLimiter(opts.Clock, opts.AuthFailuresPerMinute)),
		reportAttempts:  newAttemptLimiter(opts.Clock, opts.AuthFailuresPerMinute),
		reportTokens:    opts.NodeReportTokens,
		hostsDir:        opts.NodeHostsDir,
		lookups:         make(chan struct{}, originalLookups),
		manifests:       flight.Group[any]{Grace: manifestFetchGrace, AfterFunc: opts.Clock.AfterFunc},
	}
	s.changedOriginals, _ = lru.New[digest.Digest, bool](1 << 14)
	if opts.Rules != nil {
		s.rules = *opts.Rules
	}
	bodies := upstream.NewBodyMemory(opts.MaxUpstreamBodyMemory, len(opts.Upstreams))
	for _, cfg := range opts.Upstreams {
		if cfg.ForwardCredentials && opts.ClientAuth != nil {
			// Both read the Authorization header: a client's regnorm token
			// would go upstream.
			return nil, fmt.Errorf("proxy: upstream %q forwards credentials: client authentication cannot be on too", cfg.Name)
		}
		if _, dup := s.upstreams[cfg.Name]; dup {
			return nil, fmt.Errorf("proxy: upstream %q configured twice", cfg.Name)
		}
		if cfg.MaxBlobSize <= 0 {
			cfg.MaxBlobSize = opts.MaxBlobSize
		}
		s.upstreams[cfg.Name] = upstream.New(cfg, upstream.Options{Retry: opts.Retry, Stall: opts.StallTimeout, Now: opts.Clock.Now, Metrics: opts.Metrics.upstream,
			Memory: bodies, Log: opts.Logger})
		opts.Metrics.preset(cfg.Name)
	}
	if _, ok := s.upstreams[opts.DefaultUpstream]; !ok {
		return nil, fmt.Errorf("proxy: default upstream %q is not configured", opts.DefaultUpstream)
	}
	s.maintainer = maintain.New(maintain.Options{
		Store:          opts.Store,
		Policy:         opts.Eviction,
		Every:          opts.MaintenanceInterval,
		UploadIdle:     4 * opts.StallTimeout,
		UploadLifetime: opts.FetchTimeout + uploadMargin,
		Clock:          opts.Clock,
		Metrics:        opts.Metrics.maintain,
		Log:            opts.Logger,
	})
	if len(opts.Upstreams) == 1 && opts.Fetches.PerUpstream == 0 {
		// A share keeps other upstreams' downloads going: with none, the
		// one upstream may have every slot.
		opts.Fetches.PerUpstream = math.MaxInt
	}
	s.fetches = blobfetch.New(blobfetch.Options{
		Store:    opts.Store,
		SpoolDir: opts.SpoolDir,
		Timeout:  opts.FetchTimeout,
		Limits:   opts.Fetches,
		Clock:    opts.Clock,
		Metrics:  opts.Metrics.fetch,
		Log:      opts.Logger,
		OnHolds: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) {
			s.learn(ctx, r.Upstream(), r.Name(), dgst)
			// The fetcher is handed upstream handles only; another Remote
			// would go unconfirmed, which costs a HEAD later, nothing more.
			if up, ok := r.(*upstream.Repository); ok {
				up.Confirm(s.clock.Now())
			}
		},
		OnCommit: s.maintainer.Ingested,
	})
	platforms := normalize.DefaultPlatforms()
	if opts.Platforms != nil {
		platforms = *opts.Platforms
	}
	m := opts.Metrics
	s.engine = normalize.New(normalize.Options{
		Store:   opts.Store,
		Reports: s.reports,
		Metrics: normalize.Metrics{Rewrites: m.rewrites, RewriteErrors: m.rewriteErrors, Normalizations: m.normalizations,
			NormalizeDuration: m.normalizeDuration, LayersScanned: m.layersScanned, LayersRepackaged: m.layersRepackaged,
			LayersSkipped: m.layersSkipped, BytesScanned: m.bytesScanned, BytesRepackaged: m.bytesRepackaged, Rebuilds: m.rebuilds,
			LayerWorkInflight: m.layerWorkInflight, LayerWorkQueued: m.layerWorkQueued, LayerWorkRejected: m.layerWorkRejected},
		Log:           opts.Logger,
		Now:           opts.Clock.Now,
		Timeout:       opts.FetchTimeout,
		MaxLayerSize:  opts.MaxLayerSize,
		MaxZstdWindow: opts.MaxZstdWindow,
		Work:          opts.LayerWork,
		Platforms:     platforms,
		Ingested:      s.maintainer.Ingested,
	})
	return s, nil
}

// reportFlushInterval is how often served counts reach the stored report.
const reportFlushInterval = 10 * time.Second

// Run does the server's background work until ctx ends: it flushes the
// rewrite report (once more on the way out), measures the cache and keeps
// it within its eviction policy, and counts the nodes.
func (s *Server) Run(ctx context.Context) {
	go s.maintainer.Run(ctx)
	go s.countNodes(ctx)
	s.reports.run(ctx, reportFlushInterval)
}

// uploadMargin is added to the fetch timeout to tell a dead writer's
// multipart upload from a live one: every writer (a download, a repack, a
// rewritten config) ends within the fetch timeout.
const uploadMargin = 10 * time.Minute

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
	_, err := s.store.StatBlob(ctx, "sha256:0000000000000000000000000000000000000000000000000000000000000000")
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
