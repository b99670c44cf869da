package proxy

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// TestFleetIsBounded: however many addresses pull, the fleet remembers at
// most maxNodes of them.
func TestFleetIsBounded(t *testing.T) {
	t.Parallel()
	f := newFleet(realClock{}, time.Hour)
	for i := range maxNodes + 5000 {
		r := httptest.NewRequest("HEAD", "/v2/x/manifests/v1", nil)
		r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1234", i>>16&255, i>>8&255, i&255)
		f.sawPull(r, false)
	}
	if n := len(f.snapshot()); n != maxNodes {
		t.Fatalf("%d nodes remembered, want %d", n, maxNodes)
	}
}
