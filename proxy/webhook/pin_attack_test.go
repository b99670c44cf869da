package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/mirror"
	"github.com/regnorm/regnorm/proxy/normalize"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// pinRepo is a repository whose variant of every image is an index
// naming blobs (a multi-platform image's configs and layers): recorded
// already, or (making > 0) made in that long.
type pinRepo struct {
	variant cache.Manifest
	blobs   []digest.Digest
	making  time.Duration
}

func (pinRepo) Forwards() bool { return false }
func (r pinRepo) Recorded(context.Context, digest.Digest, ruleset.Set) (mirror.Recorded, bool, error) {
	if r.making > 0 {
		return mirror.Recorded{}, false, nil
	}
	return mirror.Recorded{Variant: r.variant}, true, nil
}
func (pinRepo) Manifest(_ context.Context, ref string, _ []string) (mirror.Manifest, error) {
	return mirror.Manifest{Manifest: cache.Manifest{Digest: digest.Digest(ref), MediaType: ocispec.MediaTypeImageIndex}}, nil
}
func (r pinRepo) Variant(_ context.Context, m cache.Manifest, _ ruleset.Set, _ time.Duration) (normalize.Result, error) {
	time.Sleep(r.making)
	return normalize.Result{Manifest: r.variant, Verdict: cache.Normalization{Original: m.Digest, Normalized: r.variant.Digest}}, nil
}
func (r pinRepo) Blobs(context.Context, cache.Manifest) ([]digest.Digest, error) { return r.blobs, nil }

// slowPins is a store on S3: each pin is a PUT, perWrite long.
type slowPins struct{ perWrite time.Duration }

func (p slowPins) Pin(context.Context, digest.Digest) error {
	time.Sleep(p.perWrite)
	return nil
}

// TestWebhookAnswersWithinItsBudgetWhilePinning: the webhook's answer must
// reach the API server within webhook.timeout (the chart keeps it at least
// 1s inside the API server's timeoutSeconds; past that the API server
// applies failurePolicy Ignore and the Pod runs the original a 1.6.8 node
// cannot run). Timeout bounds only the making of variants: pin then
// writes a pin record per blob the variant names (up to
// mirror.MaxBlobsNamed, 4096), one after the other, before the answer,
// with no deadline. On S3 a pin is a PUT (tens of ms here 25ms):
//   - a variant made in 4.5s of a 5s budget, an index of 100 blobs (a
//     few platforms' configs and layers): 2.5s of pins, 7s in all;
//   - a recorded variant (no making at all) of 600 blobs: 15s.
//
// Either way the API server has given up before the patch arrives (and the
// variant just made, pinned, is named by no Pod). The clock is synctest's.
func TestWebhookAnswersWithinItsBudgetWhilePinning(t *testing.T) {
	for _, tc := range []struct {
		name   string
		blobs  int
		making time.Duration
	}{
		{"made within the budget, 100 blobs", 100, 4500 * time.Millisecond},
		{"recorded, 600 blobs", 600, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var blobs []digest.Digest
				for i := range tc.blobs {
					blobs = append(blobs, digest.FromString(fmt.Sprint("blob ", i)))
				}
				variant := cache.Manifest{Digest: digest.FromString("variant index"), MediaType: ocispec.MediaTypeImageIndex}
				repo := pinRepo{variant: variant, blobs: blobs, making: tc.making}
				seconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "seconds"})
				const timeout = 5 * time.Second
				w, err := New(Options{
					Repository: func(string, string) (Repository, error) { return repo, nil },
					IsUpstream: func(name string) bool { return name == "docker.io" },
					RuleSets:   func(context.Context) ([]ruleset.Set, error) { return []ruleset.Set{ruleset.All()}, nil },
					Pins:       slowPins{perWrite: 25 * time.Millisecond}, Budget: 10, ImageBudget: 10,
					Timeout: timeout,
					Metrics: Metrics{Images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "images"}, []string{"result"}),
						Seconds: seconds},
					Log: slog.New(slog.DiscardHandler),
				})
				if err != nil {
					t.Fatal(err)
				}
				image := "docker.io/team/multi@" + digest.FromString("original index").String()
				review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
					`"object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"` + image + `"}]}}}}`
				start := time.Now()
				rec := httptest.NewRecorder()
				w.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(review)))
				took := time.Since(start)
				var got struct {
					Response struct{ Patch []byte }
				}
				if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &got) != nil || !strings.Contains(string(got.Response.Patch), variant.Digest.String()) {
					t.Fatalf("the variant was not written: %d %s", rec.Code, rec.Body)
				}
				var m dto.Metric
				seconds.Write(&m)
				if took > timeout+time.Second {
					t.Errorf("the answer took %s (regnorm_webhook_seconds observed %.1fs), past webhook.timeout %s and the API server's 1s more: "+
						"the API server gave up and admitted the Pod as written", took, m.GetHistogram().GetSampleSum(), timeout)
				}
			})
		})
	}
}
