package webhook

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

// TestWebhookStalledBodiesDoNotTurnAwayReviews: the reading slots bound
// the bodies being read by their count (MaxInFlight, 4), not by the bytes
// they hold. Four connections that each send 100 bytes of a review and
// then nothing hold all four for the listener's ReadTimeout (10s), and are
// opened again: every review the API server sends meanwhile is answered
// 503 at once and its Pod admitted as written (failurePolicy Ignore). Who
// can: anyone who reaches the port when the webhook asks no client
// certificate (the chart's default, and the managed clusters docs/security.md
// names, where networkPolicy.from is empty by default): four TCP
// connections, no image, no Pod rights. What the first attack bounded is
// memory (TestWebhookBoundsTheBodiesItHolds); a stalled body that holds 100
// bytes must not take the room of a 4 MiB one. The clock is synctest's.
func TestWebhookStalledBodiesDoNotTurnAwayReviews(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := bodiesOnly(t).Handler()
		release := make(chan struct{})
		var stalled atomic.Int64
		done := make(chan struct{}, MaxInFlight)
		for range MaxInFlight {
			body := &stallingBody{
				prefix:  strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"spec":{"containers":[`),
				release: release, stalled: &stalled,
			}
			go func() {
				defer func() { done <- struct{}{} }()
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/mutate", body))
			}()
		}
		synctest.Wait()
		review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"real","resource":{"version":"v1","resource":"pods"},"operation":"CREATE",` +
			`"object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"redis:7"}]}}}}`
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(review)))
		held := stalled.Load()
		close(release)
		for range MaxInFlight {
			<-done
		}
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"uid":"real"`) {
			t.Errorf("the API server's review, beside %d connections that sent 100 bytes each: %d %q", held, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
	})
}
