package proxy_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/internal/schema1"
	"github.com/regnorm/regnorm/proxy/ruleset"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/rewrite"
)

// pushSchema1 puts a signed schema 1 image in front of the harness's
// registry (which, like distribution v3, cannot store schema 1): its blobs
// go to the registry, its manifest is answered by the front, by tag and by
// digest, whatever the Accept header says (as distribution v2 does).
func pushSchema1(t *testing.T, h *harness, repo, tag string) regtest.Schema1Image {
	t.Helper()
	img, err := regtest.BuildSchema1(regtest.Schema1Options{Cmd: []string{"/bin/tool"}},
		regtest.Schema1Layer{Files: baseLayer}, regtest.Schema1Layer{Throwaway: true}, regtest.Schema1Layer{Files: oneFile})
	if err != nil {
		t.Fatal(err)
	}
	for _, blob := range img.Layers {
		h.pushBlob(t, repo, blob)
	}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/"+repo+"/manifests/"+tag && r.URL.Path != "/v2/"+repo+"/manifests/"+img.Digest.String() {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Type", img.MediaType)
		w.Header().Set("Docker-Content-Digest", img.Digest.String())
		if r.Method == http.MethodGet {
			w.Write(img.Manifest)
		}
	})
	return img
}

// TestSchema1Variants: containerd 1.x gets a schema 1 image as the upstream
// has it (it converts it itself); 2.x, which cannot pull schema 1, gets it
// converted to Docker schema 2: the layers that are not throwaways, oldest
// first, and a config with their diff IDs. Another cache (a replica)
// computes the same bytes.
func TestSchema1Variants(t *testing.T) {
	t.Parallel()
	converted := func() (digest.Digest, regtest.Schema1Image, *harness) {
		h := newHarness(t, harnessOptions{})
		img := pushSchema1(t, h, "old/app", "v1")
		return headDigest(t, h, "/v2/old/app/manifests/v1", containerdHeader("2.3.4")), img, h
	}
	got, img, h := converted()
	if got == img.Digest {
		t.Fatal("containerd 2.3.4 got the schema 1 original")
	}

	r := h.do(t, http.MethodGet, "/v2/old/app/manifests/v1", containerdHeader("1.6.20"))
	if r.status != http.StatusOK || string(r.body) != string(img.Manifest) || r.header.Get("Content-Type") != schema1.MediaTypeSigned ||
		r.header.Get("Docker-Content-Digest") != img.Digest.String() {
		t.Fatalf("containerd 1.6.20: %d %s %s; want the original", r.status, r.header.Get("Content-Type"), r.header.Get("Docker-Content-Digest"))
	}

	r = h.do(t, http.MethodGet, "/v2/old/app/manifests/v1", containerdHeader("2.3.4"))
	var m ocispec.Manifest
	if err := json.Unmarshal(r.body, &m); err != nil || r.header.Get("Content-Type") != rewrite.MediaTypeDockerManifest || digest.FromBytes(r.body) != got {
		t.Fatalf("containerd 2.3.4: %s %s (%v)", r.header.Get("Content-Type"), r.body, err)
	}
	want := []digest.Digest{img.LayerDigests[0], img.LayerDigests[2]} // not the throwaway
	if len(m.Layers) != 2 || m.Layers[0].Digest != want[0] || m.Layers[1].Digest != want[1] || m.Layers[1].Size != int64(len(img.Layers[2])) {
		t.Fatalf("layers %+v, want %v", m.Layers, want)
	}
	cfg := h.do(t, http.MethodGet, "/v2/old/app/blobs/"+m.Config.Digest.String(), containerdHeader("2.3.4"))
	var conf ocispec.Image
	if cfg.status != http.StatusOK || digest.FromBytes(cfg.body) != m.Config.Digest || json.Unmarshal(cfg.body, &conf) != nil {
		t.Fatalf("config: %d %s", cfg.status, cfg.body)
	}
	if !slices.Equal(conf.RootFS.DiffIDs, []digest.Digest{img.DiffIDs[0], img.DiffIDs[2]}) || len(conf.History) != 3 || !conf.History[1].EmptyLayer ||
		!slices.Equal(conf.Config.Cmd, []string{"/bin/tool"}) {
		t.Fatalf("config %s", cfg.body)
	}
	for _, l := range m.Layers {
		if b := h.do(t, http.MethodGet, "/v2/old/app/blobs/"+l.Digest.String(), nil); b.status != http.StatusOK {
			t.Fatalf("layer %s: %d", l.Digest, b.status)
		}
	}
	if n := h.metric(t, "regnorm_rewrites_total", `kind="schema1"`); n != 1 {
		t.Errorf("schema1 rewrites = %v, want 1", n)
	}
	var entry bool
	for _, e := range h.report(t) {
		if e.Original == img.Digest && e.Normalized == got && e.Rules == ruleset.Schema1 && slices.Equal(e.Clients, []string{"2.3.4"}) &&
			e.MediaType == rewrite.MediaTypeDockerManifest { // the variant's type, whoever wrote the entry last
			entry = true
		}
	}
	if !entry {
		t.Errorf("report %+v lacks 2.3.4's schema1 variant", h.report(t))
	}

	// The config is served only where the original is: not in another
	// repository.
	if r := h.do(t, http.MethodGet, "/v2/other/app/blobs/"+m.Config.Digest.String(), nil); r.status == http.StatusOK {
		t.Fatal("the converted config was served under another repository")
	}

	if again, _, _ := converted(); again != got {
		t.Fatalf("another cache converted to %s, this one to %s", again, got)
	}
}

// A schema 1 manifest whose bytes do not frame the digest the upstream
// claims is refused, never cached.
func TestSchema1DigestIsChecked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	img := pushSchema1(t, h, "old/app", "v1")
	tampered := strings.Replace(string(img.Manifest), `"architecture": "amd64"`, `"architecture": "arm64"`, 1)
	if tampered == string(img.Manifest) {
		t.Fatal("the fixture has no architecture to tamper with")
	}
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			h.front.relay(w, r)
			return
		}
		w.Header().Set("Content-Type", img.MediaType)
		w.Header().Set("Docker-Content-Digest", img.Digest.String())
		w.Write([]byte(tampered))
	})
	if r := h.do(t, http.MethodGet, "/v2/old/app/manifests/v1", containerdHeader("1.6.20")); r.status != http.StatusBadGateway {
		t.Fatalf("a tampered schema 1 manifest: %d %s", r.status, r.body)
	}
}

// With forwarded credentials, the converted config is admitted like the
// manifest it was made from: once the client's confirmation has expired,
// regnorm asks the upstream about the manifest (a blob of that digest does
// not exist), and serves the config only on its yes.
func TestSchema1ConfigWithForwardedCredentials(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{forward: true, clock: clk})
	img := pushSchema1(t, h, "old/app", "v1")
	converted := headDigest(t, h, "/v2/old/app/manifests/v1", containerdHeader("2.3.4"))
	var m ocispec.Manifest
	json.Unmarshal(h.do(t, http.MethodGet, "/v2/old/app/manifests/"+converted.String(), containerdHeader("2.3.4")).body, &m)
	if converted == img.Digest || m.Config.Digest == "" {
		t.Fatalf("not converted: %s", converted)
	}
	clk.Advance(2 * time.Minute) // past the upstream's last yes
	var asked []string
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			asked = append(asked, r.URL.Path)
		}
		if strings.HasSuffix(r.URL.Path, "/manifests/"+img.Digest.String()) {
			w.Header().Set("Content-Type", img.MediaType)
			w.Header().Set("Docker-Content-Digest", img.Digest.String())
			return
		}
		h.front.relay(w, r)
	})
	if r := h.do(t, http.MethodGet, "/v2/old/app/blobs/"+m.Config.Digest.String(), containerdHeader("2.3.4")); r.status != http.StatusOK {
		t.Fatalf("the converted config after the confirmation expired: %d %s", r.status, r.body)
	}
	if want := []string{"/v2/old/app/manifests/" + img.Digest.String()}; !slices.Equal(asked, want) {
		t.Errorf("asked upstream %v, want %v", asked, want)
	}
}

// An upstream that converts a tag down to schema 1 when the Accept list
// lacks the stored type (distribution v2, Quay) never does so because of
// one client's narrow list: upstream is always asked with the modern types
// too, and the tag stays what it is for every client.
func TestNarrowAcceptDoesNotConvertTheTagDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tagTTL: time.Hour})                  // the tag record is what everyone gets
	img := h.push(t, "library/app", "v1", regtest.ImageOptions{}, oneFile) // Docker schema 2
	down := pushSchema1(t, h, "library/down", "v1")
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") && !strings.Contains(r.Header.Get("Accept"), rewrite.MediaTypeDockerManifest) {
			w.Header().Set("Content-Type", down.MediaType)
			w.Header().Set("Docker-Content-Digest", down.Digest.String())
			w.Write(down.Manifest)
			return
		}
		h.front.relay(w, r)
	})
	ociOnly := http.Header{"Accept": {ocispec.MediaTypeImageManifest}, "User-Agent": {"containerd/1.6.20"}}
	h.do(t, http.MethodGet, "/v2/library/app/manifests/v1", ociOnly)
	if got := headDigest(t, h, "/v2/library/app/manifests/v1", containerdHeader("1.6.20")); got != img.ManifestDigest {
		t.Fatalf("after an OCI-only request, 1.6.20 got %s, want the upstream's schema 2 %s", got, img.ManifestDigest)
	}
}

// TestSchema1CopiesArePerRepository: a schema 1 manifest's digest covers
// its payload, not its bytes, so an upstream that answers with the bare
// payload of another upstream's signed manifest has the same digest for
// other bytes. What it sends is its own repository's copy: the good
// upstream's image is still served as it signed it, by tag and by digest,
// and after a restart.
func TestSchema1CopiesArePerRepository(t *testing.T) {
	t.Parallel()
	var payload atomic.Pointer[[]byte]
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := payload.Load()
		if p == nil || !strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(*p).String())
		if r.Method == http.MethodGet {
			w.Write(*p)
		}
	}))
	t.Cleanup(hostile.Close)
	hostileURL, _ := url.Parse(hostile.URL)
	h := newHarness(t, harnessOptions{more: []upstream.Config{{Name: "hostile", URL: hostileURL}}})
	img := pushSchema1(t, h, "old/app", "v1")
	if img.MediaType != schema1.MediaTypeSigned || bytes.Equal(img.Payload, img.Manifest) {
		t.Fatal("the fixture is not a signed schema 1 manifest")
	}
	good := func(when string) {
		t.Helper()
		for _, ref := range []string{"v1", img.Digest.String()} {
			r := h.do(t, http.MethodGet, "/v2/old/app/manifests/"+ref, containerdHeader("1.6.20"))
			if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) || r.header.Get("Content-Type") != schema1.MediaTypeSigned ||
				r.header.Get("Docker-Content-Digest") != img.Digest.String() {
				t.Errorf("%s, old/app by %s: %d, %s, %d bytes; want the signed manifest, %d bytes", when, ref, r.status,
					r.header.Get("Content-Type"), len(r.body), len(img.Manifest))
			}
		}
	}
	good("first")

	payload.Store(&img.Payload)
	r := h.do(t, http.MethodGet, "/v2/any/repo/manifests/anytag?ns=hostile", containerdHeader("1.6.20"))
	if r.status != http.StatusOK || !bytes.Equal(r.body, img.Payload) || r.header.Get("Docker-Content-Digest") != img.Digest.String() {
		t.Fatalf("the hostile upstream's answer: %d %s %.100s", r.status, r.header.Get("Docker-Content-Digest"), r.body)
	}
	good("after the hostile upstream's answer")
	h.restart(t)
	good("after a restart")
	// The hostile upstream's clients get its own bytes, by digest too.
	r = h.do(t, http.MethodGet, "/v2/any/repo/manifests/"+img.Digest.String()+"?ns=hostile", containerdHeader("1.6.20"))
	if r.status != http.StatusOK || !bytes.Equal(r.body, img.Payload) {
		t.Errorf("the hostile upstream's repository by digest: %d, %d bytes", r.status, len(r.body))
	}
}
