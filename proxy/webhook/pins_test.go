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
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// countingPins is a store on S3 that counts its pins: each a PUT,
// perWrite long.
type countingPins struct {
	perWrite time.Duration
	mu       sync.Mutex
	pinned   map[digest.Digest]int
}

func (p *countingPins) Pin(_ context.Context, dgst digest.Digest) error {
	time.Sleep(p.perWrite)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pinned[dgst]++
	return nil
}

// TestWebhookPinsInTheBackgroundPastTheDeadline: the pins an admission
// has no time left for are written after its answer, each once however
// many admissions name the variant meanwhile, and the variant is
// remembered as pinned only then: a later admission within PinFor/24
// writes none again, and once Run's context ends nothing more is pinned.
// The clock is synctest's.
func TestWebhookPinsInTheBackgroundPastTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var blobs []digest.Digest
		for i := range 600 {
			blobs = append(blobs, digest.FromString(fmt.Sprint("blob ", i)))
		}
		variant := cache.Manifest{Digest: digest.FromString("variant index"), MediaType: ocispec.MediaTypeImageIndex}
		repo := pinRepo{variant: variant, blobs: blobs}
		pins := &countingPins{perWrite: 100 * time.Millisecond, pinned: map[digest.Digest]int{}}
		const timeout = 2 * time.Second
		w, err := New(Options{
			Repository: func(string, string) (Repository, error) { return repo, nil },
			IsUpstream: func(name string) bool { return name == "docker.io" },
			RuleSets:   func(context.Context) ([]ruleset.Set, error) { return []ruleset.Set{ruleset.All()}, nil },
			Pins:       pins, Budget: 10, ImageBudget: 10, Timeout: timeout,
			Metrics: testMetrics(),
			Log:     slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		ran := make(chan struct{})
		go func() { w.Run(ctx); close(ran) }()
		image := "docker.io/team/multi@" + digest.FromString("original index").String()
		review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
			`"object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"` + image + `"}]}}}}`
		admit := func() time.Duration {
			start := time.Now()
			rec := httptest.NewRecorder()
			w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(review)))
			if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"patch"`) {
				t.Fatalf("the variant was not written: %d %s", rec.Code, rec.Body)
			}
			return time.Since(start)
		}
		// 600 pins, 8 at a time, 100ms each: 7.5s, past the 2s deadline.
		for range 3 {
			if took := admit(); took > timeout {
				t.Errorf("an admission took %s, past its %s", took, timeout)
			}
		}
		synctest.Wait()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		count := func() (written, twice int) {
			pins.mu.Lock()
			defer pins.mu.Unlock()
			for _, n := range pins.pinned {
				written += n
				if n > 1 {
					twice++
				}
			}
			return written, twice
		}
		if written, twice := count(); written != len(blobs) || twice > 0 {
			t.Errorf("after three admissions: %d pins written, %d blobs pinned more than once; want each of the %d once", written, twice, len(blobs))
		}
		admit()
		synctest.Wait()
		if written, _ := count(); written != len(blobs) {
			t.Errorf("an admission within PinFor/24 of the pins wrote %d more", written-len(blobs))
		}
		stop()
		<-ran
		w.pinned.Purge()
		admit()
		synctest.Wait()
		if written, _ := count(); written != len(blobs) {
			t.Errorf("after Run's context ended, %d more pins were written", written-len(blobs))
		}
	})
}
