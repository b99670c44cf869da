package mirror

import (
	"context"
	"log/slog"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/flight"
	"github.com/regnorm/regnorm/internal/mediatype"
	"github.com/regnorm/regnorm/proxy/attest"
	"github.com/regnorm/regnorm/proxy/blobfetch"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/replicas"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Store is what the service needs of the cache: the repositories' links,
// how what regnorm made was made, manifests, tag and referrers records,
// and blobs to read.
type Store interface {
	cache.LinkStore
	cache.ManifestStore
	cache.TagStore
	cache.ReferrersStore
	cache.BlobProvider
	// BlobSize is a cached blob's size, remembered or stat'ed
	// (cache.Store.BlobSize).
	BlobSize(ctx context.Context, dgst digest.Digest) (int64, error)
	GetDerived(ctx context.Context, dgst digest.Digest) (cache.Derived, error)
}

// MadeStore is what attesting a variant writes beside it: records of what
// regnorm made, and blobs kept from eviction (they cannot be made again on
// a read), then written.
type MadeStore interface {
	PutDerived(ctx context.Context, d cache.Derived) error
	Retain(ctx context.Context, dgst digest.Digest) error
	NewBlob(ctx context.Context) (*cache.Ingest, error)
}

// Fetcher is the single-flight download of blobs (a *blobfetch.Fetcher).
// The service admits the client before and around it: blobfetch decides
// nothing about who may read.
type Fetcher interface {
	Join(r blobfetch.Remote, dgst digest.Digest) (*blobfetch.Download, error)
	Ready(ctx context.Context, f *blobfetch.Download, r blobfetch.Remote) (*blobfetch.Download, error)
	Fetch(ctx context.Context, r blobfetch.Remote, dgst digest.Digest) error
}

// Engine is the rule engine (a *normalize.Engine). It reads images through
// a Repository's Source, so its reads are admitted as the client's own.
type Engine interface {
	Normalize(ctx context.Context, src normalize.Source, m cache.Manifest, rules ruleset.Set) (normalize.Result, error)
	RebuildLayer(ctx context.Context, src normalize.Source, d cache.Derived) error
	Verdict(ctx context.Context, m cache.Manifest, rules ruleset.Set) (cache.Normalization, bool)
}

// Clock is the time the service goes by: tag freshness, confirmations of
// forwarded credentials, and how long a client waits for its variant.
type Clock interface {
	Now() time.Time
	// AfterFunc is time.AfterFunc on this clock; stop is its Stop.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// Metrics are the service's; the caller registers them.
type Metrics struct {
	// CacheRequests counts look-ups by kind ("manifest", "referrers") and
	// result (hit, miss).
	CacheRequests *prometheus.CounterVec
	// StaleServes counts tags and referrers lists answered from an expired
	// record, by upstream.
	StaleServes *prometheus.CounterVec
	// DeadlineExceeded counts requests that stopped waiting for their
	// variant.
	DeadlineExceeded prometheus.Counter
}

// Options configure a Service. Every field is required but TagTTL.
type Options struct {
	Store   Store
	Fetches Fetcher
	Engine  Engine
	// TagTTL is how long a tag's record answers before the upstream is
	// asked again.
	TagTTL  time.Duration
	Clock   Clock
	Metrics Metrics
	Log     *slog.Logger
	// Replicas are the other replicas of the cache, whose owners do work
	// once for all (replicas.go); nil with one replica.
	Replicas *replicas.Set
	// Attest makes the variants' derivation attestations (attest.go),
	// signed when it has a Signer; nil makes none.
	Attest *attest.Maker
	// Made is where attesting writes, with Attest (the Store's cache).
	Made MadeStore
}

// What typing blobs may hold (see typeOf): the bytes read at once, sixteen
// of the largest manifests (or hundreds of configs), and the types
// remembered.
const (
	maxTypingBytes = 16 * mediatype.MaxManifestSize
	maxTypes       = 1 << 14
)

// Service makes the Repositories every reader asks. It holds what they
// share: the links known to exist, the manifest fetches under way, and the
// types of small blobs learnt (and the room to learn them in).
type Service struct {
	store     Store
	fetches   Fetcher
	engine    Engine
	links     *linkMemory
	manifests flight.Group[any]                 // by tag and Accept list, or by digest, and identity; cancelled when no client waits
	typing    *semaphore.Weighted               // bytes of the blobs being read for their type
	types     *lru.Cache[digest.Digest, string] // blob types learnt, by digest
	typings   flight.Group[string]              // cached blobs being typed, by digest and size
	replicas  *replicas.Set
	// variantAsks are the variants asked of their owners, by owner,
	// identity, original, rules and wait.
	variantAsks flight.Group[struct{}]
	attest      *attest.Maker
	made        MadeStore
	attested    *linkMemory // the variants known attested, by upstream, repository and digest
	// attestFailures are the variants whose attestation failed lately,
	// by the same key, and when; attestings those being made.
	attestFailures *lru.Cache[string, time.Time]
	attestings     flight.Group[struct{}]
	tagTTL         time.Duration
	clock          Clock
	metrics        Metrics
	log            *slog.Logger
}

// New is a Service with opts.
func New(opts Options) *Service {
	links, err := lru.New[string, struct{}](1 << 16)
	if err != nil {
		panic(err)
	}
	types, err := lru.New[digest.Digest, string](maxTypes)
	if err != nil {
		panic(err)
	}
	attestFailures, err := lru.New[string, time.Time](1 << 12)
	if err != nil {
		panic(err)
	}
	attested, err := lru.New[string, struct{}](1 << 14)
	if err != nil {
		panic(err)
	}
	return &Service{attest: opts.Attest, made: opts.Made, attested: attested, attestFailures: attestFailures, store: opts.Store, fetches: opts.Fetches, engine: opts.Engine, links: links, tagTTL: opts.TagTTL,
		typing: semaphore.NewWeighted(maxTypingBytes), types: types,
		clock: opts.Clock, metrics: opts.Metrics, log: opts.Log, replicas: opts.Replicas,
		manifests: flight.Group[any]{Grace: manifestFetchGrace, AfterFunc: opts.Clock.AfterFunc}}
}

// Repository is one repository of an upstream, read as one client: the one
// way anything reads a repository's content. Every read is admitted
// (access.go) before anything is served. It is cheap: make one per request.
type Repository struct {
	s      *Service
	remote *upstream.Repository
	serves string // the kind of work another replica asked of this one (replicas.go)
}

// Repository is remote's repository, read as remote's client (see
// upstream.Registry.As).
func (s *Service) Repository(remote *upstream.Repository) *Repository {
	return &Repository{s: s, remote: remote}
}

// Upstream is the upstream's name, as containerd sends it in ns.
func (r *Repository) Upstream() string { return r.remote.Upstream() }

// Name is the repository's name, e.g. library/redis.
func (r *Repository) Name() string { return r.remote.Name() }

// Identity tells apart who reads what (upstream.Repository.Identity):
// Repositories of one Identity get the same answers.
func (r *Repository) Identity() string { return r.remote.Identity() }

// Forwards reports whether r reads with its client's own credentials.
func (r *Repository) Forwards() bool { return r.remote.Forwards() }

// Tags is a page of the repository's tags, from the upstream as the client
// (tags change, so they are not cached), checked and bounded by
// upstream.Repository.Tags. The upstream decides who may list them.
func (r *Repository) Tags(ctx context.Context, n int, from upstream.Cursor) (upstream.TagPage, error) {
	return r.remote.Tags(ctx, n, from)
}

// Verdict is the verdict recorded for m under rules, if any: the report's
// look-up of an original it has just served. It never computes one, and
// reads no upstream.
func (s *Service) Verdict(ctx context.Context, m cache.Manifest, rules ruleset.Set) (cache.Normalization, bool) {
	return s.engine.Verdict(ctx, m, rules)
}
