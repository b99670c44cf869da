package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// manyRepo is a repository whose every image has a recorded variant of
// its own (by the image's digest) naming blobs.
type manyRepo struct{ blobs []digest.Digest }

func (manyRepo) Forwards() bool { return false }
func (manyRepo) Recorded(_ context.Context, dgst digest.Digest, _ ruleset.Set) (mirror.Recorded, bool, error) {
	v := cache.Manifest{Digest: digest.FromString("variant of " + dgst.String()), MediaType: ocispec.MediaTypeImageIndex}
	return mirror.Recorded{Variant: v}, true, nil
}
func (manyRepo) Manifest(context.Context, string, []string) (mirror.Manifest, error) {
	panic("recorded: not read")
}
func (manyRepo) Variant(context.Context, cache.Manifest, ruleset.Set, time.Duration) (normalize.Result, error) {
	panic("recorded: not made")
}
func (r manyRepo) Blobs(context.Context, cache.Manifest) ([]digest.Digest, error) {
	return r.blobs, nil
}

// recordingPins is a store on S3 (each pin a PUT, perWrite long) that
// remembers what it pinned.
type recordingPins struct {
	perWrite time.Duration
	mu       sync.Mutex
	pinned   map[digest.Digest]bool
}

func (p *recordingPins) Pin(ctx context.Context, dgst digest.Digest) error {
	select {
	case <-time.After(p.perWrite):
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pinned[dgst] = true
	return nil
}

func (p *recordingPins) has(dgst digest.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pinned[dgst]
}

// TestWebhookOnePodDoesNotHoldEveryonesPins: the pins are written by one
// queue for the whole webhook (029f32f), 4 variants at a time, 256
// waiting, first come first served; before, each admission wrote its own.
// A Pod author names, in one Pod (MaxImages, 256), 256 images of her own
// whose variants each name 4096 blobs (an index whose five unread
// children of other platforms each list one tiny layer 1000 times,
// rewrite.MaxLayers: Blobs does not deduplicate, and every name is a PUT
// on S3). Her Pod's pins take 256 × 4096 / 8 PUTs / 4
// workers, about 13 minutes at 25 ms a PUT; a new index digest (an
// annotation) makes new variants whenever she likes. Another tenant's Pod
// admitted right after has its variant's 3 pins queued behind hers: not
// in place when the answer goes, nor a minute later (docs/webhook.md:
// "otherwise within seconds of it"); with the queue full, not queued at
// all. Meanwhile its made blobs, which no upstream holds, are evicted as
// any unused blob (a filesystem cache has no eviction grace). The clock
// is synctest's.
func TestWebhookOnePodDoesNotHoldEveryonesPins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var many []digest.Digest
		for i := range mirror.MaxBlobsNamed {
			many = append(many, digest.FromString(fmt.Sprint("mallory's blob ", i%1)))
		}
		victimBlobs := []digest.Digest{digest.FromString("config"), digest.FromString("layer 1"), digest.FromString("layer 2")}
		pins := &recordingPins{perWrite: 25 * time.Millisecond, pinned: map[digest.Digest]bool{}}
		const timeout = 5 * time.Second
		w, err := New(Options{
			Repository: func(_, name string) (Repository, error) {
				if name == "team/app" {
					return manyRepo{blobs: victimBlobs}, nil
				}
				return manyRepo{blobs: many}, nil
			},
			IsUpstream: func(name string) bool { return name == "docker.io" },
			RuleSets:   func(context.Context) ([]ruleset.Set, error) { return []ruleset.Set{ruleset.All()}, nil },
			Pins:       pins, Budget: 10, ImageBudget: 10,
			Timeout: timeout,
			Metrics: testMetrics(),
			Log:     slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		ran := make(chan struct{})
		go func() { w.Run(ctx); close(ran) }()
		review := func(images []string) {
			var containers []string
			for i, im := range images {
				containers = append(containers, fmt.Sprintf(`{"name":"c%d","image":%q}`, i, im))
			}
			body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
				`"object":{"metadata":{"name":"p"},"spec":{"containers":[` + strings.Join(containers, ",") + `]}}}}`
			rec := httptest.NewRecorder()
			w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(body)))
			if rec.Code != http.StatusOK {
				t.Fatalf("review: %d %s", rec.Code, rec.Body)
			}
		}
		var mallory []string
		for i := range MaxImages {
			mallory = append(mallory, "docker.io/mallory/app@"+digest.FromString(fmt.Sprint("index ", i)).String())
		}
		review(mallory)
		review([]string{"docker.io/team/app@" + digest.FromString("team's index").String()})
		time.Sleep(time.Minute)
		synctest.Wait()
		for _, b := range victimBlobs {
			if !pins.has(b) {
				t.Errorf("another tenant's variant blob %s is not pinned a minute after its Pod was admitted, behind one Pod's 256 variants of 4096 pins", b)
			}
		}
		stop()
		<-ran
	})
}

// stalledRepo is a repository whose cache does not answer: its records are
// read until the reader gives up.
type stalledRepo struct{ manyRepo }

func (stalledRepo) Recorded(ctx context.Context, _ digest.Digest, _ ruleset.Set) (mirror.Recorded, bool, error) {
	<-ctx.Done()
	return mirror.Recorded{}, false, ctx.Err()
}

// TestWebhookAnswersWithinItsTimeWhenTheCacheStalls: the records an
// admission reads (the variant's) are read within webhook.timeout: a
// store that stalls does not hold the answer past it, where the API
// server would give up and admit the Pod with no word of why. The clock is
// synctest's.
func TestWebhookAnswersWithinItsTimeWhenTheCacheStalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 5 * time.Second
		w, err := New(Options{
			Repository: func(string, string) (Repository, error) { return stalledRepo{}, nil },
			IsUpstream: func(name string) bool { return name == "docker.io" },
			RuleSets:   func(context.Context) ([]ruleset.Set, error) { return []ruleset.Set{ruleset.All()}, nil },
			Pins:       noPins{}, Budget: 10, ImageBudget: 10, Timeout: timeout,
			Metrics: testMetrics(), Log: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
			`"object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"docker.io/team/app@` + digest.FromString("index").String() + `"}]}}}}`
		began := time.Now()
		rec := httptest.NewRecorder()
		w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(body)))
		if took := time.Since(began); rec.Code != http.StatusOK || took > timeout {
			t.Fatalf("answered %d after %s (timeout %s): %s", rec.Code, took, timeout, rec.Body)
		}
	})
}
