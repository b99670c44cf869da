package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/cache/maintain"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/fleet"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/rewrites"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// uploadMargin is added to the fetch timeout to tell a dead writer's
// multipart upload from a live one: every writer (a download, a repack, a
// rewritten config) ends within the fetch timeout.
const uploadMargin = 10 * time.Minute

// wired is the mirror as wire builds it: the server, and the work that
// runs beside it until the context ends.
type wired struct {
	server *proxy.Server
	// replicas serves the other replicas, on replicas.listen; nil when
	// there are none.
	replicas http.Handler
	// webhook serves the admission webhook, on webhook.listen; nil when it
	// is off.
	webhook http.Handler
	run     []func(ctx context.Context)
}

// wire builds the mirror's parts from cfg, over the cache and the upstreams
// serve built, and hands them to the server: the upstream clients, cache
// maintenance, the blob fetcher, the rule engine, the repository service
// over both, the rewrite report and the fleet. It is the one place that
// knows how the parts fit; each states what it needs of the others.
func wire(cfg Config, store *cache.Store, upstreams []upstream.Config, clientAuth *proxy.ClientAuth,
	reportTokens [][sha256.Size]byte, replicaSecret []byte, attestations *attest.Maker, metrics *proxy.Metrics, log *slog.Logger) (*wired, error) {
	clock := proxy.SystemClock{}
	var run []func(context.Context)

	var peers *replicas.Set
	if cfg.Replicas.enabled() {
		var err error
		peers, err = replicas.New(replicas.Options{Self: cfg.Replicas.Self, Peers: cfg.Replicas.Peers, Service: cfg.Replicas.Service,
			Refresh: cfg.Replicas.Refresh, Secret: replicaSecret, StallTimeout: cfg.StallTimeout, Clock: clock,
			Metrics: metrics.Replicas(), Log: log})
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		run = append(run, peers.Run)
	}

	bodies := upstream.NewBodyMemory(int64(cfg.MaxUpstreamBodyMemory), len(upstreams))
	regs := make([]*upstream.Registry, 0, len(upstreams))
	var maxMade int64 // the largest blob an upstream may send
	for _, up := range upstreams {
		if up.MaxBlobSize <= 0 {
			up.MaxBlobSize = int64(cfg.MaxBlobSize)
		}
		maxMade = max(maxMade, up.MaxBlobSize)
		regs = append(regs, upstream.New(up, upstream.Options{Retry: retryPolicy(cfg.UpstreamAttempts), Stall: cfg.StallTimeout,
			Now: clock.Now, Metrics: metrics.Upstream(), Memory: bodies, Holds: store, Log: log}))
	}

	maintainer := maintain.New(maintain.Options{
		Store: store,
		Policy: cache.EvictionPolicy{MaxBytes: int64(cfg.Cache.MaxSize), MaxAge: cfg.Cache.MaxAge, Grace: cfg.Cache.evictionGrace(),
			// Pins are honoured with the webhook off too: a Pod admitted
			// before it was turned off still names its variant.
			PinFor: cfg.Webhook.PinFor, MaxPinnedBytes: int64(cfg.Cache.MaxPinnedSize)},
		Every:          cfg.Cache.maintenanceInterval(),
		UploadIdle:     4 * cfg.StallTimeout,
		UploadLifetime: cfg.FetchTimeout + uploadMargin,
		Clock:          clock,
		Metrics:        metrics.Maintain(),
		Log:            log,
	})

	limits := blobfetch.Limits{Downloads: cfg.MaxDownloads, Queued: cfg.MaxQueuedDownloads, SpoolBytes: int64(cfg.SpoolMaxSize)}
	if len(upstreams) == 1 {
		// A share keeps other upstreams' downloads going: with none, the
		// one upstream may have every slot.
		limits.PerUpstream = math.MaxInt
	}
	// The fetcher tells the repository service what upstream said about
	// downloads; the service is built from the fetcher, so it is named
	// here first.
	var service *mirror.Service
	fetches := blobfetch.New(blobfetch.Options{
		Store:    store,
		SpoolDir: cfg.SpoolDir,
		Timeout:  cfg.FetchTimeout,
		Limits:   limits,
		Clock:    clock,
		Metrics:  metrics.Fetch(),
		Log:      log,
		Sent: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) bool {
			return service.SentBy(ctx, r, dgst)
		},
		OnAnswered: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) {
			service.Answered(ctx, r, dgst)
		},
		OnSent: func(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) {
			service.Sent(ctx, r, dgst)
		},
		OnCommit: maintainer.Ingested,
	})

	public := map[string]bool{} // the upstreams whose entries anyone may see
	for _, r := range regs {
		public[r.Name()] = !r.Forwards()
	}
	report := rewrites.New(rewrites.Options{Store: store, Now: clock.Now, Log: log,
		Shown: func(upstream string) bool { return public[upstream] }})

	platforms, _ := normalize.ParsePlatforms(cfg.Normalize.Platforms) // validated
	engine := normalize.New(normalize.Options{
		Store:         store,
		Reports:       report,
		Metrics:       metrics.Engine(),
		Log:           log,
		Now:           clock.Now,
		Timeout:       cfg.FetchTimeout,
		MaxLayerSize:  int64(cfg.Normalize.MaxLayerSize),
		MaxMadeSize:   maxMade,
		MaxZstdWindow: int64(cfg.Normalize.MaxZstdWindow),
		Work:          normalize.WorkLimits{Running: cfg.Normalize.MaxLayerWork, Queued: cfg.Normalize.MaxQueuedLayerWork},
		Platforms:     platforms,
		Ingested:      maintainer.Ingested,
	})
	service = mirror.New(mirror.Options{
		Store:    store,
		Fetches:  fetches,
		Engine:   engine,
		TagTTL:   cfg.TagTTL,
		Clock:    clock,
		Metrics:  metrics.Mirror(),
		Log:      log,
		Replicas: peers,
		Attest:   attestations,
		Made:     store,
	})

	rules := cfg.Normalize.policy()
	nodes, err := fleet.New(fleet.Options{
		Store:               store,
		HostsDir:            cfg.Nodes.HostsDir,
		ContainerdConfigDir: cfg.Nodes.ContainerdConfigDir,
		ForgetAfter:         cfg.Nodes.ForgetAfter,
		Rules:               *rules,
		Clock:               clock,
		Nodes:               metrics.Nodes(),
		Log:                 log,
	})
	if err != nil {
		return nil, err
	}

	var webhook *proxy.WebhookOptions
	if cfg.Webhook.enabled() {
		webhook = &proxy.WebhookOptions{Clients: cfg.Webhook.clients(), Timeout: cfg.Webhook.Timeout, PinFor: cfg.Webhook.PinFor, Pins: store}
	}
	srv, err := proxy.New(proxy.Options{
		Webhook:               webhook,
		Mirror:                service,
		Upstreams:             regs,
		DefaultUpstream:       cfg.DefaultUpstream,
		Reports:               report,
		Fleet:                 nodes,
		Usage:                 maintainer.Usage,
		Storage:               store,
		Rules:                 rules,
		Deadline:              cfg.Normalize.Deadline,
		PatientDeadline:       cfg.Normalize.PatientDeadline,
		ClientAuth:            clientAuth,
		AuthFailuresPerMinute: cfg.Auth.FailuresPerMinute,
		NodeReportTokens:      reportTokens,
		PremadeQueue:          premadeQueue(cfg.Normalize),
		Clock:                 clock,
		Metrics:               metrics,
		Logger:                log,
	})
	if err != nil {
		return nil, err
	}
	w := &wired{server: srv, webhook: srv.WebhookHandler(), run: append(run, maintainer.Run, nodes.Run, report.Run, srv.RunPremade, srv.RunWebhook)}
	if peers != nil {
		w.replicas = srv.ReplicaHandler(peers)
	}
	return w, nil
}

// premadeQueue is proxy.Options.PremadeQueue: 0 when pre-made variants are
// off.
func premadeQueue(n NormalizeConfig) int {
	if !n.Premade {
		return 0
	}
	return n.PremadeQueue
}
