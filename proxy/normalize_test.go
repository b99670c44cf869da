package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy/normalize"
)

var legacy = regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}

type reportBody struct {
	Rewrites []cache.ReportEntry `json:"rewrites"`
}

func (h *harness) report(t testing.TB) []cache.ReportEntry {
	t.Helper()
	r := h.do(t, http.MethodGet, "/api/v1/rewrites", nil)
	var body reportBody
	if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil {
		t.Fatalf("report: %d %s", r.status, r.body)
	}
	return body.Rewrites
}

// pullByTag resolves tag like containerd and fetches the manifest by the
// digest it was given, checking that digest against the bytes.
func (h *harness) pullByTag(t testing.TB, repo, tag string) (digest.Digest, []byte) {
	t.Helper()
	head := h.do(t, http.MethodHead, "/v2/"+repo+"/manifests/"+tag+"?ns=docker.io", containerdAccept)
	if head.status != http.StatusOK {
		t.Fatalf("HEAD %s:%s: %d", repo, tag, head.status)
	}
	dgst := digest.Digest(head.header.Get("Docker-Content-Digest"))
	get := h.do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+dgst.String()+"?ns=docker.io", containerdAccept)
	if get.status != http.StatusOK || digest.FromBytes(get.body) != dgst {
		t.Fatalf("GET %s@%s: %d, body hashes to %s", repo, dgst, get.status, digest.FromBytes(get.body))
	}
	return dgst, get.body
}

func TestNormalizesOctetStreamConfig(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	img := h.push(t, "library/redis", "2.8.23", legacy, oneFile)

	// Concurrent first requests normalize once.
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { h.do(t, http.MethodHead, "/v2/library/redis/manifests/2.8.23?ns=docker.io", containerdAccept) })
	}
	wg.Wait()
	dgst, body := h.pullByTag(t, "library/redis", "2.8.23")
	if dgst == img.ManifestDigest {
		t.Fatal("the octet-stream image was served under its original digest")
	}
	var m ocispec.Manifest
	json.Unmarshal(body, &m)
	if m.Config.MediaType != regtest.MediaTypeDockerConfig {
		t.Fatalf("config media type %q", m.Config.MediaType)
	}
	// Only the config media type differs from upstream's manifest.
	if want := bytes.Replace(img.Manifest, []byte(`"application/octet-stream"`), []byte(`"`+regtest.MediaTypeDockerConfig+`"`), 1); !bytes.Equal(body, want) {
		t.Fatalf("normalized manifest differs beyond the config media type:\n%s", body)
	}
	for _, desc := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		r := h.do(t, http.MethodGet, "/v2/library/redis/blobs/"+desc.Digest.String()+"?ns=docker.io", nil)
		if r.status != http.StatusOK || digest.FromBytes(r.body) != desc.Digest {
			t.Fatalf("blob %s: %d", desc.Digest, r.status)
		}
	}
	if got := h.metric(t, "regnorm_rewrites_total", `kind="config-media-type"`); got != 1 {
		t.Fatalf("rewrites = %v, want 1 (normalized once)", got)
	}
	if got := h.metric(t, "regnorm_normalized_manifests_served_total", ""); got != 11 {
		t.Fatalf("normalized answers = %v, want 11", got)
	}
	entries := h.report(t)
	if len(entries) != 1 {
		t.Fatalf("report: %+v", entries)
	}
	e := entries[0]
	if e.Upstream != "docker.io" || e.Repository != "library/redis" || e.Original != img.ManifestDigest || e.Normalized != dgst ||
		len(e.Tags) != 1 || e.Tags[0] != "2.8.23" || e.TimesServed != 11 || e.FirstServed.IsZero() ||
		len(e.Changes) != 1 || e.Changes[0].Kind != "config-media-type" || e.Changes[0].Old != "application/octet-stream" {
		t.Fatalf("report entry: %+v", e)
	}
}

func TestPullByOriginalDigestGetsOriginal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := h.push(t, "library/redis", "old", legacy, oneFile)
	normalizedDigest, _ := h.pullByTag(t, "library/redis", "old")

	r := h.do(t, http.MethodGet, "/v2/library/redis/manifests/"+img.ManifestDigest.String()+"?ns=docker.io", containerdAccept)
	if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
		t.Fatalf("pull by original digest: %d, original bytes: %v", r.status, bytes.Equal(r.body, img.Manifest))
	}
	if got := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); got != 1 {
		t.Fatalf("unnormalized digest pulls = %v, want 1", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "pin the normalized digest") || !strings.Contains(logs, normalizedDigest.String()) {
		t.Fatalf("no warning naming %s:\n%s", normalizedDigest, logs)
	}
	if e := h.report(t); len(e) != 1 || e[0].UnnormalizedPulls != 1 {
		t.Fatalf("report: %+v", e)
	}
	// The normalized digest itself is a fine pin: no warning.
	h.do(t, http.MethodGet, "/v2/library/redis/manifests/"+normalizedDigest.String()+"?ns=docker.io", containerdAccept)
	if got := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); got != 1 {
		t.Fatalf("a pull by the normalized digest counted as unnormalized (%v)", got)
	}
}

// TestPullByDigestDownloadsNothingUnasked: a pull by digest gets what it
// names and makes regnorm fetch nothing else: for an index, normalizing
// would mean every platform's layers. Once a pull by tag has normalized the
// image, a pull by the original digest is counted and reported.
func TestPullByDigestDownloadsNothingUnasked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	amd := h.push(t, "library/multi", "amd64", legacy, oneFile, xattrLayer)
	arm := h.push(t, "library/multi", "arm64", legacy, oneFile)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: amd.ManifestDigest, Size: int64(len(amd.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: arm.ManifestDigest, Size: int64(len(arm.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	if err := h.reg.Client().PushManifest(context.Background(), "library/multi", "latest", ocispec.MediaTypeImageIndex, raw); err != nil {
		t.Fatal(err)
	}
	indexPath := "/v2/library/multi/manifests/" + digest.FromBytes(raw).String()

	blobGets := h.reg.Requests(http.MethodGet, "blobs")
	for _, path := range []string{indexPath, "/v2/library/multi/manifests/" + amd.ManifestDigest.String()} {
		if r := h.do(t, http.MethodGet, path, containerdAccept); r.status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, r.status)
		}
	}
	if got := h.reg.Requests(http.MethodGet, "blobs") - blobGets; got != 0 {
		t.Fatalf("pulls by digest made regnorm download %d blobs nobody asked for", got)
	}
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != 0 {
		t.Fatalf("pulls by digest started %v normalizations", got)
	}
	if got := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); got != 0 {
		t.Fatalf("counted %v unnormalized pulls without a verdict", got)
	}

	h.pullByTag(t, "library/multi", "latest")
	if r := h.do(t, http.MethodGet, indexPath, containerdAccept); r.status != http.StatusOK || !bytes.Equal(r.body, raw) {
		t.Fatalf("pull by the original index digest: %d", r.status)
	}
	if got := h.metric(t, "regnorm_unnormalized_digest_pulls_total", ""); got != 1 {
		t.Fatalf("unnormalized pulls = %v, want 1 once the verdict is known", got)
	}
}

func TestIndexWithOneBrokenChild(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	broken := h.push(t, "library/multi", "amd64-only", legacy, oneFile)
	clean := h.push(t, "library/multi", "arm64-only", regtest.ImageOptions{}, oneFile, oneFile)
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: regtest.MediaTypeDockerManifest, Digest: clean.ManifestDigest, Size: int64(len(clean.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "arm64"}},
		{MediaType: regtest.MediaTypeDockerManifest, Digest: broken.ManifestDigest, Size: int64(len(broken.Manifest)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"},
			Annotations: map[string]string{"keep": "me"}},
	}}
	index.SchemaVersion = 2
	raw, _ := json.Marshal(index)
	if err := h.reg.Client().PushManifest(context.Background(), "library/multi", "latest", ocispec.MediaTypeImageIndex, raw); err != nil {
		t.Fatal(err)
	}

	dgst, body := h.pullByTag(t, "library/multi", "latest")
	if dgst == digest.FromBytes(raw) {
		t.Fatal("index with a broken child kept its digest")
	}
	var got ocispec.Index
	json.Unmarshal(body, &got)
	if got.Manifests[0].Digest != clean.ManifestDigest {
		t.Fatal("the clean child changed")
	}
	fixed := got.Manifests[1]
	if fixed.Digest == broken.ManifestDigest || fixed.Platform.Architecture != "amd64" || fixed.Annotations["keep"] != "me" {
		t.Fatalf("broken child entry: %+v", fixed)
	}
	// Both children are served by the digests the index names.
	for _, desc := range got.Manifests {
		r := h.do(t, http.MethodGet, "/v2/library/multi/manifests/"+desc.Digest.String()+"?ns=docker.io", containerdAccept)
		if r.status != http.StatusOK || digest.FromBytes(r.body) != desc.Digest || int64(len(r.body)) != desc.Size {
			t.Fatalf("child %s: %d", desc.Digest, r.status)
		}
	}
	if got := h.metric(t, "regnorm_rewrites_total", `kind="child-manifest"`); got != 1 {
		t.Fatalf("child-manifest rewrites = %v", got)
	}
	// The normalized child is in the report, served by digest only: its
	// tags are an empty list, not null.
	if body := string(h.do(t, http.MethodGet, "/api/v1/rewrites", nil).body); strings.Contains(body, `"tags": null`) || !strings.Contains(body, `"tags": []`) {
		t.Fatalf("report: %s", body)
	}
	// The index of clean children would have kept its digest: the clean
	// child on its own does.
	if d, _ := h.pullByTag(t, "library/multi", "arm64-only"); d != clean.ManifestDigest {
		t.Fatal("clean child tag got a new digest")
	}
}

// TestNormalizationSurvivesRestart: verdicts and the report live in the
// cache, so a new process answers the same without recomputing.
func TestNormalizationSurvivesRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})
	h.push(t, "library/redis", "2.8.23", legacy, oneFile)
	first, _ := h.pullByTag(t, "library/redis", "2.8.23")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.built.report.Run(ctx) // returns after its final flush

	blobGets := h.reg.Requests(http.MethodGet, "blobs")
	h.restart(t)
	second, _ := h.pullByTag(t, "library/redis", "2.8.23")
	if second != first {
		t.Fatalf("after restart the digest is %s, was %s", second, first)
	}
	if h.reg.Requests(http.MethodGet, "blobs") != blobGets || h.metric(t, "regnorm_rewrites_total", "") != 0 {
		t.Fatal("the restarted proxy normalized again")
	}
	if e := h.report(t); len(e) != 1 || e[0].TimesServed != 2 || e[0].Normalized != first {
		t.Fatalf("report after restart: %+v", e)
	}
}

func TestOctetStreamArtifactUntouched(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	// One layer but a config that is not an image config.
	cfg := []byte(`{"chart":"x"}`)
	if err := h.reg.Client().PushBlob(context.Background(), "library/art", cfg); err != nil {
		t.Fatal(err)
	}
	layer := regtest.RandomBytes(100)
	h.pushBlob(t, "library/art", layer)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(cfg), Size: int64(len(cfg))},
		Layers: []ocispec.Descriptor{{MediaType: "application/octet-stream", Digest: digest.FromBytes(layer), Size: 100}}}
	m.SchemaVersion = 2
	raw, _ := json.Marshal(m)
	if err := h.reg.Client().PushManifest(context.Background(), "library/art", "v1", ocispec.MediaTypeImageManifest, raw); err != nil {
		t.Fatal(err)
	}
	if d, _ := h.pullByTag(t, "library/art", "v1"); d != digest.FromBytes(raw) {
		t.Fatal("an artifact with an octet-stream config was rewritten")
	}
}

// TestIndexReadsOnlyItsPlatforms: normalizing a 10-child index (six
// platforms and four attestation manifests) reads only the children of
// the configured platforms, each one upstream manifest GET; the others are
// listed as they are, even one that the rules would change. Each
// attestation manifest's vnd.docker.reference.digest names its platform's
// child as the index lists it (the rewritten one where it was rewritten).
func TestIndexReadsOnlyItsPlatforms(t *testing.T) {
	t.Parallel()
	all, _ := normalize.ParsePlatforms([]string{"all"})
	for _, tc := range []struct {
		name      string
		platforms *normalize.Platforms
		children  int // child manifest GETs upstream
		fixed     []string
	}{
		{"default: linux/amd64 and linux/arm64", nil, 2, []string{"linux/amd64"}},
		{"all platforms, never attestations", &all, 6, []string{"linux/amd64", "linux/arm/v7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{platforms: tc.platforms})
			index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
			index.SchemaVersion = 2
			for i, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "linux/386",
				"unknown/unknown", "unknown/unknown", "unknown/unknown", "unknown/unknown"} {
				opts := regtest.ImageOptions{}
				if p == "linux/amd64" || p == "linux/arm/v7" {
					opts = legacy // the rules change these two
				}
				img := h.push(t, "library/multi", fmt.Sprintf("c%d", i), opts, []regtest.File{{Name: "f", Content: []byte(p + fmt.Sprint(i))}})
				parts := strings.Split(p, "/")
				desc := ocispec.Descriptor{MediaType: regtest.MediaTypeDockerManifest, Digest: img.ManifestDigest, Size: int64(len(img.Manifest)),
					Platform: &ocispec.Platform{OS: parts[0], Architecture: parts[1]}}
				if len(parts) == 3 {
					desc.Platform.Variant = parts[2]
				}
				if p == "unknown/unknown" {
					// buildkit's attestation of the platform child i-6.
					desc.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest",
						"vnd.docker.reference.digest": index.Manifests[i-6].Digest.String()}
				}
				index.Manifests = append(index.Manifests, desc)
			}
			raw, _ := json.Marshal(index)
			if err := h.reg.Client().PushManifest(context.Background(), "library/multi", "latest", ocispec.MediaTypeImageIndex, raw); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var gets []string
			h.front.set(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/manifests/") {
					mu.Lock()
					gets = append(gets, r.Method+" "+r.URL.Path)
					mu.Unlock()
				}
				h.front.relay(w, r)
			})

			_, body := h.pullByTag(t, "library/multi", "latest")
			mu.Lock()
			got := slices.Clone(gets)
			mu.Unlock()
			children := 0
			for _, g := range got {
				if strings.Contains(g, "/manifests/sha256:") {
					children++
				}
			}
			if children != tc.children || len(got) != tc.children+1 {
				t.Fatalf("upstream manifest requests: %d children of %d requests, want %d children and the tag: %v", children, len(got), tc.children, got)
			}
			t.Logf("a cold pull by tag of a 10-child index: %d upstream manifest requests", len(got))
			var out ocispec.Index
			json.Unmarshal(body, &out)
			var fixed []string
			for i, c := range out.Manifests {
				if c.Digest != index.Manifests[i].Digest {
					name := c.Platform.OS + "/" + c.Platform.Architecture
					if c.Platform.Variant != "" {
						name += "/" + c.Platform.Variant
					}
					fixed = append(fixed, name)
				}
			}
			if !slices.Equal(fixed, tc.fixed) {
				t.Fatalf("fixed children %v, want %v", fixed, tc.fixed)
			}
			// Each attestation names its platform's child as the index
			// lists it now: the rewritten one where it was rewritten.
			for i, c := range out.Manifests[6:] {
				if got, want := c.Annotations["vnd.docker.reference.digest"], out.Manifests[i].Digest.String(); got != want {
					t.Errorf("the attestation of %s names %s, want %s (the child listed)", out.Manifests[i].Platform.Architecture, got, want)
				}
			}
		})
	}
}
