package rewrites

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
)

// TestReportIsBounded: the stored report keeps at most maxEntries entries:
// a flush that adds entries past it removes those written least recently.
// Entries waiting for a flush are bounded the same way.
func TestReportIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	r := New(Options{Store: store, Now: time.Now, Shown: func(string) bool { return true }, Log: slog.New(slog.DiscardHandler)})
	r.maxEntries = 5
	entry := func(i int) cache.ReportEntry {
		return cache.ReportEntry{Upstream: "docker.io", Repository: fmt.Sprintf("team/app%d", i), Original: digest.FromString(fmt.Sprint(i)),
			Rules: "symlink-xattrs", Tags: []string{"v1"}, TimesServed: 1}
	}
	flush := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			r.Add(entry(i))
		}
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	flush(0, 5)
	flush(5, 8)
	stored, err := store.ListReports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var repos []string
	for _, e := range stored {
		repos = append(repos, e.Repository)
	}
	if len(stored) != 5 || !slices.Contains(repos, "team/app5") || !slices.Contains(repos, "team/app6") || !slices.Contains(repos, "team/app7") {
		t.Fatalf("stored %v; want 5 entries, the three written last among them", repos)
	}

	for i := range 10 {
		r.Add(entry(100 + i))
	}
	r.mu.Lock()
	pending := len(r.pending)
	r.mu.Unlock()
	if pending != 5 {
		t.Fatalf("%d entries pending, want at most 5", pending)
	}
}

// TestListShowsOnlyWhatShownAllows: List leaves out, and counts as hidden,
// the entries of every upstream Shown does not allow, the stored ones (an
// upstream renamed or removed since) as well as the pending ones.
func TestListShowsOnlyWhatShownAllows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := cache.New(inmemory.New())
	public := map[string]bool{"docker.io": true, "corp": false}
	r := New(Options{Store: store, Now: time.Now, Shown: func(up string) bool { return public[up] }, Log: slog.New(slog.DiscardHandler)})
	for i, up := range []string{"docker.io", "corp", "gone"} {
		r.Add(cache.ReportEntry{Upstream: up, Repository: "team/app", Original: digest.FromString(fmt.Sprint(i)), Rules: "symlink-xattrs", TimesServed: 1})
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.Add(cache.ReportEntry{Upstream: "gone", Repository: "team/pending", Original: digest.FromString("p"), Rules: "symlink-xattrs", TimesServed: 1})
	entries, hidden, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Upstream != "docker.io" || hidden != 3 {
		t.Fatalf("shown %v, %d hidden; want docker.io's entry alone, 3 hidden", entries, hidden)
	}
}
