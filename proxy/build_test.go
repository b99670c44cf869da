package proxy_test

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"math"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/rewrites"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// built is a Server and the parts a test reaches past it: cache
// maintenance, the rewrite report and the fleet, whose background work
// (Run) cmd/proxy starts and a test runs when it needs it.
type built struct {
	replicas   *replicas.Set // nil unless serverParts.replicas
	srv        *proxy.Server
	maintainer *maintain.Maintainer
	report     *rewrites.Report
	fleet      *fleet.Fleet
}

// serverParts are what a test says of the server it builds: the fields of
// harnessOptions that shape the parts, and what the harness provides.
type serverParts struct {
	harnessOptions
	store       *cache.Store
	upstreams   []upstream.Config
	defaultUp   string // default docker.io
	spoolDir    string
	reportToken string // "" configures none
	reg         prometheus.Registerer
	log         *slog.Logger
	// replicas, when set, builds the server as one replica of a Set made
	// from these options (with the server's metrics and clock).
	replicas *replicas.Options
}

// buildServer wires a Server the way cmd/proxy's wire does, from a test's
// options: the same parts, each with the test's setting or its own
// default. cmd/proxy's tests and e2e run the production wiring itself.
func buildServer(tb testing.TB, p serverParts) built {
	tb.Helper()
	var clock proxy.Clock = proxy.SystemClock{}
	if p.clock != nil {
		clock = p.clock
	}
	if p.defaultUp == "" {
		p.defaultUp = "docker.io"
	}
	if p.reg == nil {
		p.reg = prometheus.NewRegistry()
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	metrics := proxy.NewMetrics(p.reg)
	memory := p.bodyMemory
	if memory <= 0 {
		memory = upstream.DefaultBodyMemory
	}
	bodies := upstream.NewBodyMemory(memory, len(p.upstreams))
	var regs []*upstream.Registry
	var maxMade int64
	for _, cfg := range p.upstreams {
		r := upstream.New(cfg, upstream.Options{Retry: p.retry, Stall: p.stall, Now: clock.Now, Metrics: metrics.Upstream(), Memory: bodies, Holds: p.store, Log: p.log})
		maxMade = max(maxMade, r.MaxBlobSize())
		regs = append(regs, r)
	}
	maintainer := maintain.New(maintain.Options{Store: p.store, Policy: p.eviction, Clock: clock, Metrics: metrics.Maintain(), Log: p.log})
	limits := p.fetches
	if len(p.upstreams) == 1 && limits.PerUpstream == 0 {
		limits.PerUpstream = math.MaxInt // as wire: one upstream may have every slot
	}
	var service *mirror.Service
	fetches := blobfetch.New(blobfetch.Options{Store: p.store, SpoolDir: p.spoolDir, Limits: limits, Clock: clock,
		Metrics: metrics.Fetch(), Log: p.log, OnCommit: maintainer.Ingested,
		Sent: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) bool {
			return service.SentBy(ctx, r, dgst)
		},
		OnAnswered: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { service.Answered(ctx, r, dgst) },
		OnSent:     func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) { service.Sent(ctx, r, dgst) }})
	public := map[string]bool{}
	for _, r := range regs {
		public[r.Name()] = !r.Forwards()
	}
	report := rewrites.New(rewrites.Options{Store: p.store, Now: clock.Now, Log: p.log, Shown: func(name string) bool { return public[name] }})
	platforms := normalize.DefaultPlatforms()
	if p.platforms != nil {
		platforms = *p.platforms
	}
	engine := normalize.New(normalize.Options{Store: p.store, Reports: report, Metrics: metrics.Engine(), Log: p.log, Now: clock.Now,
		MaxLayerSize: p.maxLayerSize, MaxMadeSize: maxMade, MaxZstdWindow: p.maxZstdWindow, Work: p.layerWork,
		Platforms: platforms, Ingested: maintainer.Ingested})
	var peers *replicas.Set
	if p.replicas != nil {
		o := *p.replicas
		o.Clock, o.Metrics, o.Log = clock, metrics.Replicas(), p.log
		var err error
		if peers, err = replicas.New(o); err != nil {
			tb.Fatal(err)
		}
	}
	service = mirror.New(mirror.Options{Store: p.store, Fetches: fetches, Engine: engine, TagTTL: p.tagTTL, Clock: clock,
		Metrics: metrics.Mirror(), Log: p.log, Replicas: peers, Attest: p.attest, Made: p.store})
	rules := p.rules
	if rules == nil {
		def := ruleset.DefaultPolicy()
		rules = &def
	}
	nodes, err := fleet.New(fleet.Options{Store: p.store, HostsDir: p.hostsDir, Rules: *rules, Clock: clock, Nodes: metrics.Nodes(), Log: p.log})
	if err != nil {
		tb.Fatal(err)
	}
	var tokens [][sha256.Size]byte
	if p.reportToken != "" {
		tokens = [][sha256.Size]byte{sha256.Sum256([]byte(p.reportToken))}
	}
	var wh *proxy.WebhookOptions
	if p.webhook != nil {
		o := *p.webhook
		o.Pins = p.store
		wh = &o
	}
	srv, err := proxy.New(proxy.Options{Webhook: wh, Mirror: service, Upstreams: regs, DefaultUpstream: p.defaultUp, Reports: report, Fleet: nodes,
		Usage: maintainer.Usage, Storage: p.store, Rules: rules, Deadline: p.deadline, PatientDeadline: p.patient,
		ClientAuth: p.clientAuth, AuthFailuresPerMinute: p.authFailures, NodeReportTokens: tokens, PremadeQueue: p.premadeQueue, Clock: clock,
		Metrics: metrics, Logger: p.log})
	if err != nil {
		tb.Fatal(err)
	}
	return built{srv: srv, maintainer: maintainer, report: report, fleet: nodes, replicas: peers}
}
