package label_test

import (
	"slices"
	"testing"

	"github.com/regnorm/regnorm/proxy/label"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	for code, want := range map[int]string{
		200: "200", 206: "206", 304: "304", 404: "404", 431: "431", 503: "503",
		299: "2xx", 418: "4xx", 599: "5xx", 102: "1xx",
		600: label.Other, 999: label.Other, 0: label.Other, -200: label.Other, 1200: label.Other,
	} {
		if got := label.Status(code); got != want {
			t.Errorf("Status(%d) = %q, want %q", code, got, want)
		}
	}
	// Statuses lists every value Status gives, and no more than that.
	seen := map[string]bool{}
	for code := -1; code <= 1000; code++ {
		v := label.Status(code)
		seen[v] = true
		if !slices.Contains(label.Statuses(), v) {
			t.Errorf("Status(%d) = %q is not in Statuses", code, v)
		}
	}
	if len(seen) != len(label.Statuses()) {
		t.Errorf("Statuses has %d values, Status gives %d", len(label.Statuses()), len(seen))
	}
}

func TestMethod(t *testing.T) {
	t.Parallel()
	for m, want := range map[string]string{
		"GET": "GET", "HEAD": "HEAD", "POST": "POST", "DELETE": "DELETE", "PATCH": "PATCH",
		"get": label.Other, "PROPFIND": label.Other, "MADEUP": label.Other, "": label.Other,
	} {
		if got := label.Method(m); got != want {
			t.Errorf("Method(%q) = %q, want %q", m, got, want)
		}
	}
}

func TestSet(t *testing.T) {
	t.Parallel()
	s := label.NewSet("hit", "miss")
	for v, want := range map[string]string{"hit": "hit", "miss": "miss", "Hit": label.Other, "other": label.Other} {
		if got := s.Of(v); got != want {
			t.Errorf("Of(%q) = %q, want %q", v, got, want)
		}
	}
	if got := s.Values(); !slices.Equal(got, []string{"hit", "miss", label.Other}) {
		t.Errorf("Values() = %q", got)
	}
}
