package errcode

import (
	"errors"
	"net/http"
	"testing"
)

// TestBusy: every refusal for lack of room (downloads, layer work) is one
// answer: 503 UNAVAILABLE with the same Retry-After, the cause kept for the
// log only.
func TestBusy(t *testing.T) {
	t.Parallel()
	cause := errors.New("queue full")
	e := Busy("too much in progress; retry shortly", cause)
	if e.Status != http.StatusServiceUnavailable || e.Code != Unavailable || e.RetryAfter != RetryAfterBusy || !errors.Is(e, cause) {
		t.Fatalf("got %+v", e)
	}
	if got := Public(e); got.Message != "too much in progress; retry shortly" {
		t.Fatalf("public message %q", got.Message)
	}
}
