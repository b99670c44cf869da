package webhook

import (
	"context"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Bounds of the pinning, which runs beside the admissions: a variant
// names up to mirror.MaxBlobsNamed (4096) blobs, a pin is a write (a PUT
// on S3), and the answer must reach the API server within webhook.timeout.
const (
	// pinWorkers is how many variants are pinned at once.
	pinWorkers = 4
	// pinConcurrency is how many pins of one variant are written at once.
	pinConcurrency = 8
	// pinQueue is how many variants wait to be pinned, and pinQueueBytes
	// how many bytes of their manifests they hold together: past either, a
	// variant is not pinned this time (logged; the next admission that
	// names it tries again).
	pinQueue      = 256
	pinQueueBytes = 16 << 20
)

// pinner pins variants in the background, each once at a time however
// many admissions name it (deduplicated by digest), on a context of its
// own that ends with the webhook (Webhook.Run), never with an admission's
// request: an admission waits for its pins only within its deadline.
type pinner struct {
	ctx context.Context
	do  func(ctx context.Context, j *pinJob) // writes j's pins

	mu      sync.Mutex
	jobs    map[digest.Digest]*pinJob // waiting or being pinned
	queue   []*pinJob                 // waiting
	bytes   int                       // of the waiting jobs' manifests
	workers int
	wg      sync.WaitGroup
}

// pinJob is a variant to pin; done is closed once it is pinned, or given
// up.
type pinJob struct {
	repo    Repository
	variant cache.Manifest
	done    chan struct{}
}

func newPinner(ctx context.Context, do func(context.Context, *pinJob)) *pinner {
	return &pinner{ctx: ctx, do: do, jobs: map[digest.Digest]*pinJob{}}
}

// add has variant pinned: the job under way for it, if any, or a new one.
// It is nil when the queue is full or the webhook stopped.
func (p *pinner) add(repo Repository, variant cache.Manifest) *pinJob {
	p.mu.Lock()
	defer p.mu.Unlock()
	if j, ok := p.jobs[variant.Digest]; ok {
		return j
	}
	if p.ctx.Err() != nil || len(p.queue) >= pinQueue || p.bytes+len(variant.Content) > pinQueueBytes {
		return nil
	}
	j := &pinJob{repo: repo, variant: variant, done: make(chan struct{})}
	p.jobs[variant.Digest] = j
	p.queue = append(p.queue, j)
	p.bytes += len(variant.Content)
	if p.workers < pinWorkers {
		p.workers++
		p.wg.Add(1)
		go p.work()
	}
	return j
}

// work pins the waiting variants until there are none; once the webhook
// stopped, it gives them up.
func (p *pinner) work() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		j := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.bytes -= len(j.variant.Content)
		p.mu.Unlock()
		if p.ctx.Err() == nil {
			p.do(p.ctx, j)
		}
		p.mu.Lock()
		delete(p.jobs, j.variant.Digest)
		p.mu.Unlock()
		close(j.done)
	}
}

// pinBlobs writes the pins of j's variant, pinConcurrency at a time; the
// variant is remembered as pinned only once every pin is written.
func (w *Webhook) pinBlobs(ctx context.Context, j *pinJob) {
	now := w.opts.Now()
	// A child not known to be the Pod's repository's is asked of the
	// upstream, once: at most two requests each (a HEAD, and the bytes of
	// one its upstream never sent).
	blobs, err := j.repo.Blobs(upstream.WithBudget(ctx, 2*mirror.MaxChildrenRead), j.variant)
	if err != nil {
		w.opts.Log.Warn("pinning: reading a variant failed", "digest", j.variant.Digest, "error", err)
		return
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pinConcurrency)
	seen := map[digest.Digest]bool{}
	for _, dgst := range blobs {
		// Each blob once, and not again within PinFor/24 whatever names
		// it: what one variant names many times, or many variants name,
		// costs one write.
		if seen[dgst] {
			continue
		}
		seen[dgst] = true
		if at, ok := w.blobsPin.Get(dgst); ok && now.Sub(at) < w.opts.PinFor/24 {
			continue
		}
		g.Go(func() error {
			if err := w.opts.Pins.Pin(gctx, dgst); err != nil {
				return err
			}
			w.blobsPin.Add(dgst, now)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		w.opts.Log.Warn("pinning a variant's blobs failed", "variant", j.variant.Digest, "error", err)
		return
	}
	w.pinned.Add(j.variant.Digest, now)
}
