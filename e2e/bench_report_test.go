//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// results are the figures, by scenario and contender.
type results struct {
	Options   map[string]any                        `json:"options"`
	Durations map[string]map[string][]time.Duration `json:"durations_ns"`
	Bytes     map[string]map[string]int64           `json:"bytes"`
	order     []string
}

func (r *results) add(scenario, contender string, d time.Duration) {
	if r.Durations == nil {
		r.Durations = map[string]map[string][]time.Duration{}
	}
	if r.Durations[scenario] == nil {
		r.Durations[scenario] = map[string][]time.Duration{}
		r.order = append(r.order, scenario)
	}
	r.Durations[scenario][contender] = append(r.Durations[scenario][contender], d)
}

func (r *results) addBytes(scenario, contender string, n int64) {
	if r.Bytes == nil {
		r.Bytes = map[string]map[string]int64{}
	}
	if r.Bytes[scenario] == nil {
		r.Bytes[scenario] = map[string]int64{}
		r.order = append(r.order, scenario)
	}
	r.Bytes[scenario][contender] = n
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// report prints a table, one row per scenario and contender, with ratios
// against direct and distribution's proxy where they apply, and the goals.
func (r *results) report(w io.Writer, cleanBytes int64) {
	fmt.Fprintf(w, "\n%-42s %-38s %10s %21s %s\n", "scenario", "contender", "median", "spread (min–max)", "ratios")
	for _, sc := range r.order {
		if bs, ok := r.Bytes[sc]; ok {
			for _, c := range []string{"direct", "distribution-proxy", "regnorm", oneReplica, threeReplicas} {
				if _, ok := bs[c]; !ok {
					continue
				}
				fmt.Fprintf(w, "%-42s %-38s %9.1fMB %21s %.2f× the image\n", sc, c, float64(bs[c])/1e6, "", float64(bs[c])/float64(cleanBytes))
			}
			continue
		}
		byC := r.Durations[sc]
		for _, c := range sortedContenders(byC) {
			ds := byC[c]
			lo, hi := slices.Min(ds), slices.Max(ds)
			ratio := ""
			if d, ok := byC["direct"]; ok && c != "direct" {
				ratio += fmt.Sprintf("%.2f× direct ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC["direct (original)"]; ok && c != "direct (original)" && sc[:2] == "4 " {
				ratio += fmt.Sprintf("%.2f× direct pull of the original ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC[schema1Direct]; ok && c != schema1Direct {
				ratio += fmt.Sprintf("%.2f× 1.6.20's direct pull (it converts itself) ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC["distribution-proxy (original)"]; ok && strings.HasPrefix(c, "regnorm") {
				ratio += fmt.Sprintf("%.2f× distribution-proxy ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC["distribution-proxy"]; ok && c == "regnorm" {
				ratio += fmt.Sprintf("%.2f× distribution-proxy ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC[owner]; ok && c == nonOwner {
				ratio += fmt.Sprintf("%.2f× the owner ", median(ds).Seconds()/median(d).Seconds())
			}
			if d, ok := byC["loopback limit"]; ok && c != "loopback limit" {
				ratio += fmt.Sprintf("%.2f of the loopback limit", median(d).Seconds()/median(ds).Seconds())
			}
			fmt.Fprintf(w, "%-42s %-38s %10s %10s–%-10s %s\n", sc, c, round(median(ds)), round(lo), round(hi), ratio)
		}
	}
}

// The contenders of the schema 1 scenario.
const (
	schema1Direct  = "direct (original), containerd 1.6.20"
	schema1Regnorm = "regnorm (converted), containerd 2.3.4"
)

func sortedContenders(m map[string][]time.Duration) []string {
	order := []string{"direct", "direct (original)", "distribution-proxy", "distribution-proxy (original)", "regnorm", "regnorm, containerd CRI",
		"regnorm, containerd 2.3.4", "regnorm, containerd 1.6.8", schema1Direct, schema1Regnorm, owner, nonOwner, "loopback limit"}
	var out []string
	for _, c := range order {
		if _, ok := m[c]; ok {
			out = append(out, c)
		}
	}
	return out
}

func round(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
