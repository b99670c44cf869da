package premade

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Workers is how many images' variants are made at once: each makes one
// variant at a time, whose layer work waits its turn in the engine's queue
// with the clients' (normalize.WorkLimits).
const Workers = 2

// Defaults of Options' zero fields.
const (
	// DefaultQueue is how many images may wait for their variants.
	DefaultQueue = 64
	// DefaultTimeout bounds the making of one variant.
	DefaultTimeout = 30 * time.Minute
)

// MaxQueuedBytes bounds the manifests the queue holds, whatever their
// number: an image offered beyond it is dropped.
const MaxQueuedBytes = 16 << 20

// What the work remembers of the variants it made or found recorded, so
// that the pulls that follow (every pull by tag offers its image) cost no
// look-up in the cache: at most recallSize, each for recallFor.
const (
	recallSize = 1 << 14
	recallFor  = 10 * time.Minute
)

// Results of one variant's making, regnorm_premade_variants_total's result
// label.
const (
	// Made: the variant differs from the original, and is recorded.
	Made = "made"
	// Clean: the rules change nothing; that verdict is recorded.
	Clean = "clean"
	// Dropped: the queue was full; the image was not offered.
	Dropped = "dropped"
	// Busy: the engine's layer work queue was full (normalize.ErrBusy);
	// the variant is made by the first pull that needs it, as without
	// pre-made variants.
	Busy = "busy"
	// Failed: the making failed (an upstream error, a timeout).
	Failed = "error"
)

// Results are every result label's value.
var Results = []string{Made, Clean, Dropped, Busy, Failed}

// Repository is what the work reads an image through: a
// *mirror.Repository, as the client that pulled.
type Repository interface {
	// Identity tells apart who reads what: work done for one identity
	// stands for it only.
	Identity() string
	// Forwards reports whether the repository is read with its client's
	// own credentials.
	Forwards() bool
	Variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error)
}

// Metrics are the work's; the caller registers them.
type Metrics struct {
	// Variants counts the variants made, by result (Results).
	Variants *prometheus.CounterVec
	// Queued is how many images wait for a worker.
	Queued prometheus.Gauge
}

// Options configure a Maker. RuleSets, Verdict, Budget, Metrics and Log
// are required.
type Options struct {
	// RuleSets are the rule sets of the containerd versions in the fleet
	// (fleet.Fleet.RuleSets).
	RuleSets func(ctx context.Context) ([]ruleset.Set, error)
	// Verdict is the verdict recorded for an original under rules, if any
	// (mirror.Service.Verdict): a variant that has one is not made again.
	Verdict func(ctx context.Context, m cache.Manifest, rules ruleset.Set) (cache.Normalization, bool)
	// Queue is how many images may wait for a worker; more are dropped.
	// Default DefaultQueue.
	Queue int
	// Budget is how many upstream requests the variants of one image may
	// cause together: a pull's.
	Budget int
	// Timeout bounds the making of one variant. Default DefaultTimeout.
	Timeout time.Duration
	// Now is the time the work goes by (default time.Now).
	Now     func() time.Time
	Metrics Metrics
	Log     *slog.Logger
}

// Maker makes the fleet's variants of the images offered to it, in the
// background, until Run's context ends.
type Maker struct {
	opts Options
	jobs chan job

	mu      sync.Mutex
	pending map[string]bool // the images queued or being made, by identity and original
	bytes   int64           // of the manifests queued
	recall  *lru.Cache[string, time.Time]
	sets    []ruleset.Set // the fleet's, as last walked
	setsAt  time.Time
}

// job is one image whose variants the fleet needs.
type job struct {
	key    string // identity and original
	repo   Repository
	m      cache.Manifest
	client ruleset.Set // the rules of the client that pulled it: its own variant is made
}

// New builds a Maker.
func New(opts Options) (*Maker, error) {
	if opts.RuleSets == nil || opts.Verdict == nil || opts.Budget <= 0 || opts.Log == nil {
		return nil, errors.New("premade: the fleet's rule sets, verdicts, a budget and a logger are required")
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	recall, err := lru.New[string, time.Time](recallSize)
	if err != nil {
		panic(err)
	}
	for _, r := range Results {
		opts.Metrics.Variants.WithLabelValues(r)
	}
	return &Maker{opts: opts, jobs: make(chan job, opts.Queue), pending: map[string]bool{}, recall: recall}, nil
}

// Offer queues m, an original a client with rules was just answered for
// by tag through repo, to have the variants the rest of the fleet needs
// made. It never waits: an image already queued is not queued twice, and
// one that does not fit is dropped. Repositories read with forwarded
// credentials are not offered: a variant made with one client's
// credentials would be made (and its upstream requests sent) for clients
// regnorm has not seen ask, with credentials kept past their request.
func (p *Maker) Offer(repo Repository, m cache.Manifest, rules ruleset.Set) {
	if repo.Forwards() {
		return
	}
	key := repo.Identity() + " " + m.Digest.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending[key] {
		return
	}
	size := int64(len(m.Content))
	if p.bytes+size > MaxQueuedBytes {
		p.opts.Metrics.Variants.WithLabelValues(Dropped).Inc()
		return
	}
	select {
	case p.jobs <- job{key: key, repo: repo, m: m, client: rules}:
		p.pending[key] = true
		p.bytes += size
		p.opts.Metrics.Queued.Inc()
	default:
		p.opts.Metrics.Variants.WithLabelValues(Dropped).Inc()
	}
}

// Run makes the variants of the images offered, Workers at a time, until
// ctx ends; it returns when every worker has. What is still queued then is
// left: the nodes' pulls make it, as without pre-made variants.
func (p *Maker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-p.jobs:
					p.opts.Metrics.Queued.Dec()
					p.mu.Lock()
					p.bytes -= int64(len(j.m.Content))
					p.mu.Unlock()
					if ctx.Err() != nil {
						// select picks at random among the ready: a job
						// taken as the context ended is left, as queued.
						return
					}
					p.make(ctx, j)
				}
			}
		})
	}
	wg.Wait()
}

// make makes the variants of j's image that the fleet's rule sets need
// and that are not recorded yet: one a distinct set of the rules that
// may change it, the pulling client's own excepted.
func (p *Maker) make(ctx context.Context, j job) {
	defer func() {
		p.mu.Lock()
		delete(p.pending, j.key)
		p.mu.Unlock()
	}()
	sets, err := p.ruleSets(ctx)
	if err != nil {
		// The nodes that pulled are known all the same.
		p.opts.Log.Warn("listing the fleet's nodes for pre-made variants failed", "error", err)
	}
	ctx = upstream.WithBudget(ctx, p.opts.Budget)
	done := []ruleset.Set{normalize.Applicable(j.m, j.client)}
	for _, rules := range sets {
		applicable := normalize.Applicable(j.m, rules)
		if !normalize.MayNeed(j.m, rules) || slices.Contains(done, applicable) {
			continue
		}
		done = append(done, applicable)
		key := j.key + " " + applicable.Key()
		if p.recalled(key) {
			continue
		}
		if _, ok := p.opts.Verdict(ctx, j.m, rules); ok {
			p.remember(key)
			continue
		}
		result := p.makeOne(ctx, j, rules)
		p.opts.Metrics.Variants.WithLabelValues(result).Inc()
		if result == Made || result == Clean {
			p.remember(key)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// ruleSetsFor is how long the fleet's rule sets are taken as they were:
// a hot tag's pulls queue a job each, and the fleet's walk takes the lock
// its pulls take.
const ruleSetsFor = 10 * time.Second

// ruleSets is the fleet's rule sets, walked at most every ruleSetsFor.
func (p *Maker) ruleSets(ctx context.Context) ([]ruleset.Set, error) {
	p.mu.Lock()
	if now := p.opts.Now(); now.Sub(p.setsAt) < ruleSetsFor {
		sets := p.sets
		p.mu.Unlock()
		return sets, nil
	}
	p.mu.Unlock()
	sets, err := p.opts.RuleSets(ctx)
	if err == nil {
		p.mu.Lock()
		p.sets, p.setsAt = sets, p.opts.Now()
		p.mu.Unlock()
	}
	return sets, err
}

// makeOne makes j's variant for rules, as the client that pulled it would
// have, waiting as long as it takes within the timeout.
func (p *Maker) makeOne(ctx context.Context, j job, rules ruleset.Set) string {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	n, err := j.repo.Variant(ctx, j.m, rules, 0)
	switch {
	case errors.Is(err, normalize.ErrBusy):
		return Busy
	case err != nil:
		p.opts.Log.Warn("making a pre-made variant failed", "original", j.m.Digest, "rules", rules.Key(), "error", err)
		return Failed
	case n.Changed():
		return Made
	}
	return Clean
}

func (p *Maker) recalled(key string) bool {
	at, ok := p.recall.Get(key)
	return ok && p.opts.Now().Sub(at) < recallFor
}

func (p *Maker) remember(key string) { p.recall.Add(key, p.opts.Now()) }
