package upstream

import "testing"

func TestParseRateLimit(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]struct {
		n, window float64
		ok        bool
	}{
		"100;w=21600":   {100, 21600, true},
		" 76 ; w=21600": {76, 21600, true},
		"5000":          {5000, 0, true},
		"0;w=60":        {0, 60, true},
		"":              {},
		"NaN":           {},
		"-1;w=60":       {},
		"1e9":           {},
		"100;w=Inf":     {100, 0, true},
	} {
		n, w, ok := parseRateLimit(in)
		if n != want.n || w != want.window || ok != want.ok {
			t.Errorf("parseRateLimit(%q) = %v, %v, %v; want %v", in, n, w, ok, want)
		}
	}
}
