package rewrites

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	lru "github.com/hashicorp/golang-lru/v2"
	digest "github.com/opencontainers/go-digest"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/proxy/ruleset"
)

// schema1Manifest is an original that the schema 1 rule may change, which
// clients of 1.x get as it is.
func schema1Manifest(i int) cache.Manifest {
	content := []byte(fmt.Sprintf(`{"schemaVersion":1,"name":"app","tag":"v%d","fsLayers":[],"history":[]}`, i))
	return cache.Manifest{MediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws", Digest: digest.FromBytes(content), Content: content}
}

// TestOriginalsListPulledImages: Originals lists the originals of the
// report's entries and those answered by tag that an enabled rule may
// change, once each with their tags, most recent first; not those answered
// by digest or that no enabled rule may change; those Shown does not show
// are counted, not listed. What Pulled remembers is bounded.
func TestOriginalsListPulledImages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Unix(1e9, 0)
	r := New(Options{Store: cache.New(inmemory.New()), Now: func() time.Time { now = now.Add(time.Second); return now },
		Shown: func(up string) bool { return up != "corp" }, Log: slog.New(slog.DiscardHandler)})
	small, err := lru.New[string, pulled](3)
	if err != nil {
		t.Fatal(err)
	}
	r.pulled = small
	enabled := ruleset.Default()
	old, reported := schema1Manifest(0), schema1Manifest(1)
	r.Add(cache.ReportEntry{Upstream: "docker.io", Repository: "team/reported", Original: reported.Digest, Rules: "schema1", Tags: []string{"v1"}, LastServed: now, TimesServed: 1})
	r.Pulled(Answer{Upstream: "docker.io", Repository: "team/old", Tag: "v1", Original: old}, enabled)
	r.Pulled(Answer{Upstream: "docker.io", Repository: "team/old", Tag: "latest", Original: old}, enabled)
	r.Pulled(Answer{Upstream: "docker.io", Repository: "team/reported", Tag: "v2", Original: reported}, enabled)
	r.Pulled(Answer{Upstream: "docker.io", Repository: "team/bydigest", Original: schema1Manifest(2)}, enabled)
	r.Pulled(Answer{Upstream: "docker.io", Repository: "team/norule", Tag: "v1", Original: schema1Manifest(3)}, ruleset.Set{ConfigMediaType: true})
	r.Pulled(Answer{Upstream: "corp", Repository: "team/private", Tag: "v1", Original: schema1Manifest(4)}, enabled)

	got, hidden, err := r.Originals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hidden != 1 || len(got) != 2 {
		t.Fatalf("listed %+v, %d hidden; want team/reported and team/old, 1 hidden", got, hidden)
	}
	if got[0].Repository != "team/reported" || !slices.Equal(got[0].Tags, []string{"v1", "v2"}) || got[0].Digest != reported.Digest {
		t.Errorf("first %+v; want team/reported, tags v1 and v2", got[0])
	}
	if got[1].Repository != "team/old" || !slices.Equal(got[1].Tags, []string{"v1", "latest"}) || got[1].Digest != old.Digest {
		t.Errorf("second %+v; want team/old, tags v1 and latest", got[1])
	}

	for i := range 5 {
		r.Pulled(Answer{Upstream: "docker.io", Repository: fmt.Sprintf("team/more%d", i), Tag: "v1", Original: schema1Manifest(10 + i)}, enabled)
	}
	if n := r.pulled.Len(); n != 3 {
		t.Errorf("Pulled remembers %d images, want at most 3", n)
	}
}
