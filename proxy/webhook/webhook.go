package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/imageref"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
)

// Bounds of one admission and of the webhook's work.
const (
	// MaxBody bounds an AdmissionReview's body: a Pod is at most about
	// 1.5 MiB in etcd, and an update carries the old object too. Past it
	// the answer is 413, and the API server applies the failure policy.
	MaxBody = 4 << 20
	// MaxImages is how many images of one Pod are looked at; the rest are
	// left as written (skipped).
	MaxImages = 256
	// MaxInFlight is how many variants admissions wait for at once (the
	// making slots): an image whose variant is being made for another
	// admission waits for that work and takes no slot of its own. Past
	// them, the variant is made in the background (MaxBackground) and
	// the image is left as written (pending); those whose variant is
	// recorded are answered all the same.
	MaxInFlight = 4
	// MaxBackground is how many variants the webhook makes at once that
	// no admission waits for, started when every making slot is taken;
	// past it too, the image is left as written at once (skipped, busy).
	MaxBackground = 4
	// imageConcurrency is how many images of one admission are worked on
	// at once.
	imageConcurrency = 4
	// MaxReading bounds the bytes of the bodies being read and decoded at
	// once, all together: a body holds what it has sent (its buffer, in
	// steps that at most double it), and then as much again while its
	// objects are decoded. A request that finds no room is answered 503.
	MaxReading = 16 << 20
	// ReadTimeout bounds the reading of a review, headers and body, on the
	// webhook's listener: the API server sends it at once, and a stalled
	// body holds what it sent of MaxReading until then.
	ReadTimeout = 5 * time.Second
	// MaxTimeout bounds the webhook's time budget: the API server waits
	// at most 30 s for a webhook.
	MaxTimeout = 25 * time.Second
	// maxWarnings bounds the warnings of one answer (the API server shows
	// them to the client that created the Pod).
	maxWarnings = 8
	// pinMemory is how many variants the webhook remembers pinning.
	pinMemory = 1 << 14
	// blobPinMemory is how many blobs the webhook remembers pinning: a
	// blob that many variants name (a base layer) is written once per
	// PinFor/24, however many variants name it.
	blobPinMemory = 1 << 16
)

// Defaults of Options' zero fields.
const (
	DefaultTimeout = 10 * time.Second
	DefaultPinFor  = 720 * time.Hour
)

// Results of one image's admission, regnorm_webhook_images_total's result
// label.
const (
	// Replaced: the image was written as its variant.
	Replaced = "replaced"
	// Clean: the variant is the original (or the image names a variant
	// already); left as written.
	Clean = "clean"
	// Pending: the variant was not ready in time, or every making slot
	// was taken by other variants; the Pod runs the original and the
	// variant is made in the background.
	Pending = "pending"
	// Skipped: by tag, of a registry regnorm does not mirror, of an
	// upstream with forwarded credentials, with no containerd version of
	// the fleet known, past MaxImages, while every making slot and every
	// slot behind them was taken (MaxInFlight, MaxBackground), or (dry
	// run) without a recorded variant.
	Skipped = "skipped"
	// Failed: reading the image or making its variant failed.
	Failed = "error"
)

// Results are every result label's value.
var Results = []string{Replaced, Clean, Pending, Skipped, Failed}

// Repository is what the webhook reads an image through: a
// *mirror.Repository, read as regnorm itself.
type Repository interface {
	// Forwards reports whether the repository is read with its client's
	// own credentials: the webhook has none.
	Forwards() bool
	// Recorded is the variant of dgst as far as the cache records it,
	// without reading upstream, making or writing anything: a dry run's
	// answer, and every answer whose variant is there already.
	Recorded(ctx context.Context, dgst digest.Digest, rules ruleset.Set) (mirror.Recorded, bool, error)
	// Manifest is the original by digest, read (from the cache, or the
	// upstream) as any pull is.
	Manifest(ctx context.Context, ref string, accept []string) (mirror.Manifest, error)
	// Variant makes m's variant under rules, waiting at most wait
	// (mirror.ErrNotReady past it: the work goes on).
	Variant(ctx context.Context, m cache.Manifest, rules ruleset.Set, wait time.Duration) (normalize.Result, error)
	// Blobs are the blobs a variant names (for an index, its cached
	// children's, nested ones too), bounded: what is pinned.
	Blobs(ctx context.Context, m cache.Manifest) ([]digest.Digest, error)
}

// Pinner keeps blobs from eviction (cache.Store.Pin).
type Pinner interface {
	Pin(ctx context.Context, dgst digest.Digest) error
}

// Metrics are the webhook's; the caller registers them.
type Metrics struct {
	// Images counts the images admitted, by result (Results).
	Images *prometheus.CounterVec
	// Seconds observes how long an admission took.
	Seconds prometheus.Observer
}

// Options configure a Webhook. Repository, IsUpstream, RuleSets, Pins,
// Budget, ImageBudget, Metrics and Log are required.
type Options struct {
	// Repository is the repository name on the upstream of that name, read
	// as regnorm itself.
	Repository func(upstream, name string) (Repository, error)
	// IsUpstream tells a configured upstream's name.
	IsUpstream func(name string) bool
	// RuleSets are the rule sets of the containerd versions the variants
	// are made for (those of webhook.clients, or the fleet's as node-config
	// reported it, fleet.Fleet.ReportedRuleSets): the webhook makes the
	// variant of their union. They must be read from what every replica
	// reads alike (configuration, records in the cache), never from what
	// one process saw: the same Pod gets the same answer from each. None:
	// images are skipped.
	RuleSets func(ctx context.Context) ([]ruleset.Set, error)
	// Pins keeps the blobs of the variants written into Pods (the cache).
	Pins Pinner
	// Timeout is how long one admission may take to make variants, all
	// its images together. Default DefaultTimeout; at most MaxTimeout.
	Timeout time.Duration
	// PinFor is how long a variant's blobs are kept after the last
	// admission that named it (cache.EvictionPolicy.PinFor). Default
	// DefaultPinFor. The webhook pins a variant again at most every
	// PinFor/24.
	PinFor time.Duration
	// Budget is how many upstream requests one admission may cause, all
	// its images together, and ImageBudget how many one image may (a
	// pull's).
	Budget, ImageBudget int
	// Now is the time the webhook goes by (default time.Now).
	Now     func() time.Time
	Metrics Metrics
	Log     *slog.Logger
}

// Webhook is the mutating admission webhook.
type Webhook struct {
	opts     Options
	mu       sync.Mutex
	making   map[string]int                       // variants admissions wait for (at most MaxInFlight), by makingKey: the images waiting
	behind   map[string]struct{}                  // variants made with no admission waiting (at most MaxBackground)
	reading  *semaphore.Weighted                  // bytes of the bodies being read and decoded (MaxReading)
	pinned   *lru.Cache[digest.Digest, time.Time] // when each variant was last pinned
	blobsPin *lru.Cache[digest.Digest, time.Time] // when each blob was last pinned
	pins     *pinner                              // the pins being written, in the background
	ctx      context.Context                      // of the background work: the pins, the variants made behind
	stop     context.CancelFunc                   // ends the background work (Run)
	behindWG sync.WaitGroup                       // the variants made behind
}

// New builds a Webhook.
func New(opts Options) (*Webhook, error) {
	if opts.Repository == nil || opts.IsUpstream == nil || opts.RuleSets == nil || opts.Pins == nil ||
		opts.Budget <= 0 || opts.ImageBudget <= 0 || opts.Metrics.Images == nil || opts.Metrics.Seconds == nil || opts.Log == nil {
		return nil, errors.New("webhook: repositories, upstreams, rule sets, pins, budgets, metrics and a logger are required")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Timeout > MaxTimeout {
		return nil, fmt.Errorf("webhook: a timeout of %s is past %s: the API server waits 30 s at most", opts.Timeout, MaxTimeout)
	}
	if opts.PinFor <= 0 {
		opts.PinFor = DefaultPinFor
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	pinned, err := lru.New[digest.Digest, time.Time](pinMemory)
	if err != nil {
		panic(err)
	}
	blobsPin, err := lru.New[digest.Digest, time.Time](blobPinMemory)
	if err != nil {
		panic(err)
	}
	for _, r := range Results {
		opts.Metrics.Images.WithLabelValues(r)
	}
	w := &Webhook{opts: opts, making: map[string]int{}, behind: map[string]struct{}{}, reading: semaphore.NewWeighted(MaxReading), pinned: pinned, blobsPin: blobsPin}
	w.ctx, w.stop = context.WithCancel(context.Background())
	w.pins = newPinner(w.ctx, w.pinBlobs)
	return w, nil
}

// Run holds the webhook's background work (the pins it writes past an
// admission's deadline, the variants it makes with no admission waiting)
// until ctx ends; then it stops that work and returns once it has.
// Without Run, that work ends with the process.
func (w *Webhook) Run(ctx context.Context) {
	<-ctx.Done()
	// Under the locks that start work: none starts once the waits begin.
	w.mu.Lock()
	w.pins.mu.Lock()
	w.stop()
	w.pins.mu.Unlock()
	w.mu.Unlock()
	w.pins.wg.Wait()
	w.behindWG.Wait()
}

// Handler serves POST /mutate and GET /healthz, and nothing else: the
// webhook's listener is not the registry's.
func (w *Webhook) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", w.serveMutate)
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "ok\n") })
	return mux
}

// serveMutate answers an AdmissionReview. A body that is too large or is
// no AdmissionReview is a plain 413 or 400 (the API server then applies
// the failure policy, Ignore); every review gets allowed: true.
//
// The bodies being read and decoded hold at most MaxReading bytes
// together, counted as they arrive: a request that finds no room for its
// next bytes is answered 503 at once. It cannot be answered allowed: the
// review's uid, which the answer must carry, is in the body. The API
// server takes 503 as the webhook failing and applies the failure policy,
// Ignore: the Pod is admitted as written (and the API server logs the
// failure), as when the webhook is busy making variants. A body that
// stalls holds what it sent, until the listener's ReadTimeout. What an
// admission holds past its body is the Pod's images and annotations,
// decoded.
func (w *Webhook) serveMutate(rw http.ResponseWriter, r *http.Request) {
	start := w.opts.Now()
	defer func() { w.opts.Metrics.Seconds.Observe(w.opts.Now().Sub(start).Seconds()) }()
	rv, status, msg := w.read(r)
	if status == http.StatusServiceUnavailable {
		rw.Header().Set("Retry-After", "1")
	}
	if status != http.StatusOK {
		http.Error(rw, msg, status)
		return
	}
	resp := w.admit(r.Context(), rv)
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(admissionReview{APIVersion: reviewAPIVersion, Kind: reviewKind, Response: resp})
}

// reviewed is a review as the webhook works on it, read and decoded under
// a reading slot: the body and the raw objects are dropped by then.
type reviewed struct {
	req *admissionRequest // without Object and OldObject
	// pod is the Pod, nil when the review is no business of the webhook's
	// (another resource or operation, an object that is not a Pod, an
	// update without the Pod as it was).
	pod *pod
	// old is the Pod as it was, on an update through the
	// ephemeralcontainers subresource (only the ephemeral containers it
	// did not have may be patched, and no annotation).
	old *pod
}

// errNoRoom is a body's read past MaxReading, all bodies together.
var errNoRoom = errors.New("no room for another body")

// read reads and decodes r's review, within MaxReading: the status to
// answer, and its message, unless it is 200.
func (w *Webhook) read(r *http.Request) (reviewed, int, string) {
	body, held, err := w.readBody(r.Body)
	defer func() { w.reading.Release(held) }()
	switch {
	case errors.Is(err, errNoRoom):
		return reviewed{}, http.StatusServiceUnavailable, "regnorm's webhook is reading as many reviews as it takes at once"
	case errors.As(err, new(*http.MaxBytesError)):
		return reviewed{}, http.StatusRequestEntityTooLarge, fmt.Sprintf("an AdmissionReview is at most %d bytes", MaxBody)
	case err != nil:
		return reviewed{}, http.StatusBadRequest, "reading the body failed"
	}
	// Decoding copies the objects out of the body: as much again.
	if !w.reading.TryAcquire(int64(len(body))) {
		return reviewed{}, http.StatusServiceUnavailable, "regnorm's webhook is reading as many reviews as it takes at once"
	}
	held += int64(len(body))
	return w.decode(body)
}

// readBody reads a body of at most MaxBody bytes, taking room for them
// from MaxReading as they arrive (its buffer grows in steps that at most
// double it): held is what it took, to give back once the body is done
// with, also on an error.
func (w *Webhook) readBody(r io.Reader) (body []byte, held int64, err error) {
	const firstStep = 4 << 10
	for {
		if len(body) == cap(body) {
			if len(body) > MaxBody {
				return nil, held, &http.MaxBytesError{Limit: MaxBody}
			}
			grown := min(max(2*cap(body), firstStep), MaxBody+1)
			step := int64(grown - cap(body))
			if !w.reading.TryAcquire(step) {
				return nil, held, errNoRoom
			}
			held += step
			body = append(make([]byte, 0, grown), body...)
		}
		n, err := r.Read(body[len(body):cap(body)])
		body = body[:len(body)+n]
		switch {
		case errors.Is(err, io.EOF):
			if len(body) > MaxBody {
				return nil, held, &http.MaxBytesError{Limit: MaxBody}
			}
			return body, held, nil
		case err != nil:
			return nil, held, err
		}
	}
}

// decode decodes a review's body.
func (w *Webhook) decode(body []byte) (reviewed, int, string) {
	var review admissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.APIVersion != reviewAPIVersion || review.Kind != reviewKind ||
		review.Request == nil || review.Request.UID == "" {
		return reviewed{}, http.StatusBadRequest, "the body is not an " + reviewAPIVersion + " AdmissionReview with a request"
	}
	req := review.Request
	rv := reviewed{req: req}
	defer func() { req.Object, req.OldObject = nil, nil }()
	ephemeralOnly := false
	switch {
	case req.Resource.Group != "" || req.Resource.Resource != "pods":
		return rv, http.StatusOK, ""
	case req.Operation == "CREATE" && req.SubResource == "":
	case req.Operation == "UPDATE" && req.SubResource == "ephemeralcontainers":
		ephemeralOnly = true
	default:
		return rv, http.StatusOK, ""
	}
	var p pod
	if err := json.Unmarshal(req.Object, &p); err != nil {
		w.opts.Log.Warn("admission: the object is not a Pod", "namespace", req.Namespace, "uid", req.UID, "error", err)
		return rv, http.StatusOK, ""
	}
	if ephemeralOnly {
		// Which ephemeral containers are new is told by the Pod as it was:
		// without it, none is known to be, and none is changed.
		old := new(pod)
		if err := json.Unmarshal(req.OldObject, old); err != nil || string(req.OldObject) == "null" {
			w.opts.Log.Warn("admission: an update without the Pod as it was", "namespace", req.Namespace, "uid", req.UID, "error", err)
			return rv, http.StatusOK, ""
		}
		rv.old = old
	}
	rv.pod = &p
	return rv, http.StatusOK, ""
}

// admit is the answer to rv: allowed, with a patch when an image was
// replaced.
func (w *Webhook) admit(ctx context.Context, rv reviewed) *admissionResponse {
	req := rv.req
	resp := &admissionResponse{UID: req.UID, Allowed: true}
	if rv.pod == nil {
		return resp
	}
	p, old, ephemeralOnly := rv.pod, rv.old, rv.old != nil
	slots := p.slots(old)
	if len(slots) > MaxImages {
		w.count(Skipped, len(slots)-MaxImages)
		slots = slots[:MaxImages]
	}
	dryRun := req.DryRun != nil && *req.DryRun
	outcomes := w.images(ctx, slots, dryRun)
	replaced := map[int]string{}
	var notes, warnings []string
	for i, s := range slots {
		o := outcomes[s.image]
		w.count(o.result, 1)
		switch o.result {
		case Replaced:
			replaced[i] = imageref.WithDigest(s.image, o.variant)
		case Pending:
			warnings = append(warnings, "regnorm is making the variant of "+shorten(s.image)+" that the fleet's containerd versions can run: this Pod runs the image as written, a later one gets the variant")
		}
		if o.note != "" && !slices.Contains(notes, o.note) {
			notes = append(notes, o.note)
		}
	}
	pending := len(warnings)
	if len(warnings) > maxWarnings {
		warnings = append(warnings[:maxWarnings-1], fmt.Sprintf("and %d more images", len(warnings)-maxWarnings+1))
	}
	resp.Warnings = append(notes, warnings...)
	// Metadata changes through the ephemeralcontainers subresource are
	// dropped by the API server: no annotation there.
	patch, dropped, err := p.patch(slots, replaced, !ephemeralOnly)
	if err != nil {
		w.opts.Log.Error("admission: writing the patch failed", "uid", req.UID, "error", err)
		return resp
	}
	if dropped > 0 {
		resp.Warnings = append(resp.Warnings, fmt.Sprintf("%s leaves out %d replaced images: the Pod's annotations are bounded", VariantsAnnotation, dropped))
	}
	if patch != nil {
		resp.PatchType, resp.Patch = "JSONPatch", patch
	}
	w.opts.Log.Info("admission", "namespace", req.Namespace, "uid", req.UID, "operation", req.Operation,
		"images", len(slots), "replaced", len(replaced), "pending", pending, "dry_run", dryRun)
	return resp
}

// shorten keeps an image reference within a warning's room.
func shorten(image string) string {
	if len(image) > 160 {
		return image[:160] + "…"
	}
	return image
}

func (w *Webhook) count(result string, n int) {
	if n > 0 {
		w.opts.Metrics.Images.WithLabelValues(result).Add(float64(n))
	}
}

// outcome is what the admission of one image came to.
type outcome struct {
	result  string
	variant digest.Digest // with Replaced
	// note is why the image was skipped, when the Pod's creator should be
	// told (once for all its images).
	note string
}

// noFleet is the note of an image skipped because no containerd version of
// the fleet is known.
const noFleet = "regnorm knows no containerd version of the fleet (webhook.clients, or node-config's reports): images left as written"

// busy is the note of an image skipped because MaxInFlight other
// variants are being made for admissions, and MaxBackground more behind
// them.
const busy = "regnorm is busy making variants for other admissions: images whose variant is not made yet are left as written"

// outOfTime is the note of an image skipped because the admission's time
// (webhook.timeout) was spent on its other images before its turn.
const outOfTime = "regnorm's time for this admission (webhook.timeout) was spent before some images' turn: they are left as written"

// admission is what the images of one admission share.
type admission struct {
	rules    ruleset.Set
	known    bool // some containerd version of the fleet is known
	deadline time.Time
	dryRun   bool

	mu   sync.Mutex
	pins []*pinJob // the pins of the variants the answer names
}

// pin has the blobs of variant pinned (Webhook.pin), and the answer wait
// for them within the admission's deadline (wait).
func (a *admission) pin(w *Webhook, repo Repository, variant cache.Manifest) {
	if j := w.pin(repo, variant); j != nil {
		a.mu.Lock()
		a.pins = append(a.pins, j)
		a.mu.Unlock()
	}
}

// wait waits for the admission's pins until its deadline (or ctx's end):
// those not written by then are written in the background, and the
// answer goes on without them.
func (a *admission) wait(ctx context.Context, w *Webhook) {
	if len(a.pins) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.deadline.Sub(w.opts.Now()))
	defer cancel()
	for _, j := range a.pins {
		select {
		case <-j.done:
		case <-ctx.Done():
			return
		}
	}
}

// makingKey is what a variant's making is known by: as the engine's work
// is (the original, the rules, the repository it is read through), so
// that the admissions that wait for the same work share one slot.
func makingKey(ref imageref.Image, rules ruleset.Set) string {
	return ref.Registry + "/" + ref.Repository + "@" + ref.Digest.String() + " " + rules.Key()
}

// take has an image wait for the making of key's variant: it joins the
// admissions waiting for it already, or takes one of MaxInFlight making
// slots, never waiting for one. ok is false when every slot is taken by
// another variant; else give it back with give.
func (w *Webhook) take(key string) (ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := w.making[key]; n > 0 || len(w.making) < MaxInFlight {
		w.making[key] = n + 1
		return true
	}
	return false
}

func (w *Webhook) give(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.making[key]--; w.making[key] == 0 {
		delete(w.making, key)
	}
}

// behindAdmissions makes ref's variant with no admission waiting for it,
// when every making slot is taken: at most MaxBackground at once, each
// variant once, within an image's upstream budget, on the webhook's own
// context (Run). It reports whether the variant is being made so; past
// MaxBackground it is not.
func (w *Webhook) behindAdmissions(repo Repository, ref imageref.Image, rules ruleset.Set, key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.behind[key]; ok {
		return true
	}
	if len(w.behind) >= MaxBackground || w.ctx.Err() != nil {
		return false
	}
	w.behind[key] = struct{}{}
	w.behindWG.Add(1)
	go func() {
		defer w.behindWG.Done()
		defer func() {
			w.mu.Lock()
			delete(w.behind, key)
			w.mu.Unlock()
		}()
		ctx := upstream.WithBudget(w.ctx, w.opts.ImageBudget)
		m, err := repo.Manifest(ctx, ref.Digest.String(), nil)
		if err == nil {
			_, err = repo.Variant(ctx, m.Manifest, rules, 0)
		}
		if err != nil && w.ctx.Err() == nil {
			w.opts.Log.Warn("making a variant behind the admissions failed", "repository", ref.Registry+"/"+ref.Repository, "digest", ref.Digest, "error", err)
		}
	}()
	return true
}

// images works out each distinct image of slots, imageConcurrency at a
// time, all within one time budget and one upstream budget.
func (w *Webhook) images(ctx context.Context, slots []slot, dryRun bool) map[string]outcome {
	outcomes := map[string]outcome{}
	var todo []string
	for _, s := range slots {
		if _, ok := outcomes[s.image]; !ok {
			outcomes[s.image] = outcome{}
			todo = append(todo, s.image)
		}
	}
	// The records are read within the admission's time too: a stalled
	// store must not hold the answer past it.
	rctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	rules, known, err := w.rules(rctx)
	cancel()
	if err != nil {
		// The versions known are used all the same.
		w.opts.Log.Warn("admission: listing the fleet's containerd versions failed", "error", err)
	}
	a := &admission{rules: rules, known: known, deadline: w.opts.Now().Add(w.opts.Timeout), dryRun: dryRun}
	ctx = upstream.WithBudget(ctx, w.opts.Budget)
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(imageConcurrency)
	for _, image := range todo {
		g.Go(func() error {
			o := w.image(upstream.WithShare(ctx, w.opts.ImageBudget), image, a)
			mu.Lock()
			outcomes[image] = o
			mu.Unlock()
			return nil
		})
	}
	g.Wait()
	a.wait(ctx, w)
	return outcomes
}

// rules is the union of the rule sets the variants are made for; known is
// false when there are none (no version is known, which is not a fleet
// that needs no rule).
func (w *Webhook) rules(ctx context.Context) (union ruleset.Set, known bool, err error) {
	sets, err := w.opts.RuleSets(ctx)
	for _, s := range sets {
		union = union.Union(s)
	}
	return union, len(sets) > 0, err
}

// image works out one image: whether, and as what, it is replaced.
func (w *Webhook) image(ctx context.Context, image string, a *admission) outcome {
	ref, err := imageref.Kubernetes(image)
	if err != nil || ref.Digest == "" || !w.opts.IsUpstream(ref.Registry) {
		return outcome{result: Skipped}
	}
	repo, err := w.opts.Repository(ref.Registry, ref.Repository)
	if err != nil {
		return w.failed(image, err)
	}
	if repo.Forwards() {
		// Its credentials are the Pod's pull secrets, which the webhook
		// does not have.
		return outcome{result: Skipped}
	}
	switch {
	case !a.known:
		// Not clean: nothing says what the fleet runs.
		return outcome{result: Skipped, note: noFleet}
	case a.rules.Empty():
		return outcome{result: Clean}
	}
	rctx, cancel := context.WithTimeout(ctx, max(a.deadline.Sub(w.opts.Now()), time.Millisecond))
	rec, ok, err := repo.Recorded(rctx, ref.Digest, a.rules)
	cancel()
	switch {
	case err != nil:
		return w.failed(image, err)
	case ok:
		return w.answer(repo, rec, a)
	case a.dryRun:
		// Nothing is read upstream or made.
		return outcome{result: Skipped}
	}
	left := a.deadline.Sub(w.opts.Now())
	if left <= 0 {
		return outcome{result: Skipped, note: outOfTime}
	}
	key := makingKey(ref, a.rules)
	if !w.take(key) {
		if w.behindAdmissions(repo, ref, a.rules, key) {
			return outcome{result: Pending}
		}
		return outcome{result: Skipped, note: busy}
	}
	defer w.give(key)
	mctx, cancel := context.WithTimeout(ctx, left)
	m, err := repo.Manifest(mctx, ref.Digest.String(), nil)
	cancel()
	switch {
	case err != nil && errors.Is(mctx.Err(), context.DeadlineExceeded):
		return outcome{result: Skipped, note: outOfTime}
	case err != nil:
		return w.failed(image, err)
	}
	wait := max(a.deadline.Sub(w.opts.Now()), time.Millisecond)
	n, err := repo.Variant(ctx, m.Manifest, a.rules, wait)
	switch {
	case errors.Is(err, mirror.ErrNotReady):
		return outcome{result: Pending}
	case err != nil:
		return w.failed(image, err)
	case !n.Changed():
		return outcome{result: Clean}
	}
	a.pin(w, repo, n.Manifest)
	return outcome{result: Replaced, variant: n.Verdict.Normalized}
}

// answer is the outcome of an image whose variant is recorded: replaced by
// it, or kept when the rules leave it or it names a variant already (this
// webhook's output, reviewed again). A variant a Pod is to name is pinned,
// but by a dry run.
func (w *Webhook) answer(repo Repository, rec mirror.Recorded, a *admission) outcome {
	if !a.dryRun && rec.Variant.Digest != "" {
		a.pin(w, repo, rec.Variant)
	}
	if rec.Made || rec.Variant.Digest == "" {
		return outcome{result: Clean}
	}
	return outcome{result: Replaced, variant: rec.Variant.Digest}
}

func (w *Webhook) failed(image string, err error) outcome {
	w.opts.Log.Warn("admission: an image's variant failed", "image", shorten(image), "error", err)
	return outcome{result: Failed}
}

// pin has the blobs variant names (Repository.Blobs: for an index, those
// of its cached children, however deep the engine made them) kept from
// eviction for PinFor, at most once every PinFor/24 per variant: the job
// that writes the pins, in the background (pinner), or nil when there is
// none to wait for. A pin that fails, or finds the queue full, is logged:
// the Pod is admitted all the same, and the next admission that names the
// variant tries again.
func (w *Webhook) pin(repo Repository, variant cache.Manifest) *pinJob {
	if at, ok := w.pinned.Get(variant.Digest); ok && w.opts.Now().Sub(at) < w.opts.PinFor/24 {
		return nil
	}
	j := w.pins.add(repo, variant)
	if j == nil {
		w.opts.Log.Warn("admission: too many variants are waiting to be pinned: this one is not, this time", "digest", variant.Digest)
	}
	return j
}
