package proxy_test

// Attacks on the admission webhook (issue 24 item 1), as failing tests:
// each says what an attacker or a Pod author does and what must hold.

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/upstream"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// rawReview is the body of an AdmissionReview the test writes itself (an
// old object too, or one that no API server sent).
func rawReview(t *testing.T, req admissionv1.AdmissionRequest) []byte {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &req,
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestWebhookLeavesHostsContainerdDoesNotMirror: containerd picks a
// registry's mirror by the host as the image writes it
// (certs.d/<host>/hosts.toml, no case folding), so GHCR.io/... is pulled
// from the upstream itself, not through regnorm's ghcr.io, on every node.
// The original pulls (the host's DNS name and certificate do not care for
// case); a variant written there does not exist upstream, and the Pod
// cannot start anywhere. The webhook must leave an image alone unless its
// registry is exactly a mirrored upstream's name.
func TestWebhookLeavesHostsContainerdDoesNotMirror(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	u, _ := url.Parse(h.front.URL)
	h.opts.more = []upstream.Config{{Name: "ghcr.io", URL: u}}
	h.restart(t)
	broken := h.push(t, "team/app", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	// Mirrored as written: replaced (the harness works).
	if _, patched := h.review(t, newPod([]string{"ghcr.io/team/app@" + broken.ManifestDigest.String()}, nil, nil), reviewOpts{}); !strings.Contains(patched.Spec.Containers[0].Image, "@sha256:") ||
		strings.HasSuffix(patched.Spec.Containers[0].Image, broken.ManifestDigest.String()) {
		t.Fatalf("ghcr.io as written was not replaced: %q", patched.Spec.Containers[0].Image)
	}
	for _, image := range []string{
		"GHCR.io/team/app@" + broken.ManifestDigest.String(),
		"Ghcr.Io/team/app:v1@" + broken.ManifestDigest.String(),
	} {
		resp, patched := h.review(t, newPod([]string{image}, nil, nil), reviewOpts{})
		if got := patched.Spec.Containers[0].Image; got != image {
			t.Errorf("%s, which containerd pulls from the upstream itself, became %s (patch %s)", image, got, resp.Patch)
		}
	}
}

// TestWebhookAnswersAlikeAcrossReplicas: without webhook.clients (the
// chart's default) the webhook wrote the variant of the containerd
// versions this process saw pulling, which it holds in memory only.
// Another replica, or this one after a restart, answered the same Pod
// otherwise: the same input, other bytes, and a Pod admitted there names
// the original a 1.6.8 node cannot run. The versions must come from what
// every replica reads alike: node-config's reports, records in the cache.
// A 1.6.8 node that pulled through one replica changes nothing (both
// answer alike: skipped, with a warning, not clean: nothing says what the
// fleet runs); once node-config reported on it, both write the same
// variant.
func TestWebhookAnswersAlikeAcrossReplicas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: &proxy.WebhookOptions{}, tagTTL: time.Hour})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	if r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/v0.5.0", containerdHeader("1.6.8")); r.status != http.StatusOK {
		t.Fatalf("the 1.6.8 node's pull: %d", r.status)
	}
	p := newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil)
	resp, first := h.review(t, p, reviewOpts{})
	if first.Spec.Containers[0].Image != p.Spec.Containers[0].Image || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "no containerd version") {
		t.Errorf("the replica a 1.6.8 node pulled through, with no node reported on: image %q, warnings %q; want it as written, and a warning", first.Spec.Containers[0].Image, resp.Warnings)
	}
	wantResults(t, h, map[string]float64{webhook.Skipped: 1})

	report := cache.NodeReport{Node: "worker-1", Address: "10.0.0.1", ContainerdVersion: "v1.6.8", ReadsHostsToml: true,
		HostsDir: "/etc/containerd/certs.d", ConfigVersion: 2}
	if err := h.reporter().ReportNode(context.Background(), report); err != nil {
		t.Fatal(err)
	}
	_, reported := h.review(t, p, reviewOpts{})
	if reported.Spec.Containers[0].Image == p.Spec.Containers[0].Image {
		t.Fatal("with a 1.6.8 node reported on, the image was not replaced")
	}
	h.restart(t) // another replica on the same cache
	resp, second := h.review(t, p, reviewOpts{})
	if got, want := second.Spec.Containers[0].Image, reported.Spec.Containers[0].Image; got != want {
		t.Errorf("another replica wrote %q (patch %s, warnings %q), the first %q", got, resp.Patch, resp.Warnings, want)
	}
	wantResults(t, h, map[string]float64{webhook.Replaced: 1})
}

// pushIndex pushes an OCI index of children (amd64, arm64 in that order)
// as repo:tag.
func pushIndex(t *testing.T, h *harness, repo, tag string, children ...[]byte) ([]byte, digest.Digest) {
	t.Helper()
	var descs []ocispec.Descriptor
	for i, c := range children {
		var m struct{ MediaType string }
		if err := json.Unmarshal(c, &m); err != nil {
			t.Fatal(err)
		}
		descs = append(descs, ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(c), Size: int64(len(c)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: []string{"amd64", "arm64"}[i]}})
	}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: descs}
	index.SchemaVersion = 2
	raw, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.reg.Client().PushManifest(context.Background(), repo, tag, ocispec.MediaTypeImageIndex, raw); err != nil {
		t.Fatal(err)
	}
	return raw, digest.FromBytes(raw)
}

// TestWebhookPinsWhatANestedIndexNames: the engine makes the variant of an
// index that lists an index (normalize.MaxIndexDepth, 2), and the webhook writes it
// into the Pod; but it pins only the blobs of the variant's own children,
// and an index child has none: the made config and layers of the
// platform manifests below it are evicted like any unpinned blob, though
// no upstream holds them. Every blob the variant names, however deep, must
// stay while the pin does.
func TestWebhookPinsWhatANestedIndexNames(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	amd := h.push(t, "team/multi", "amd64", regtest.ImageOptions{}, baseLayer, xattrLayer)
	arm := h.push(t, "team/multi", "arm64", regtest.ImageOptions{}, baseLayer)
	inner, _ := pushIndex(t, h, "team/multi", "inner", amd.Manifest, arm.Manifest)
	_, top := pushIndex(t, h, "team/multi", "v1", inner)
	_, patched := h.review(t, newPod([]string{"team/multi@" + top.String()}, nil, nil), reviewOpts{})
	_, variant, _ := strings.Cut(patched.Spec.Containers[0].Image, "@")
	if variant == top.String() || variant == "" {
		t.Fatalf("not replaced: %q", patched.Spec.Containers[0].Image)
	}

	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1, PinFor: webhook.DefaultPinFor}, time.Now()); err != nil {
		t.Fatal(err)
	}
	var check func(dgst digest.Digest, depth int)
	check = func(dgst digest.Digest, depth int) {
		m, err := h.store.GetManifest(context.Background(), "docker.io", "team/multi", dgst)
		if err != nil {
			t.Fatalf("manifest %s: %v", dgst, err)
		}
		var refs struct {
			Config    *struct{ Digest digest.Digest }
			Layers    []struct{ Digest digest.Digest }
			Manifests []struct{ Digest digest.Digest }
		}
		if err := json.Unmarshal(m.Content, &refs); err != nil {
			t.Fatal(err)
		}
		var blobs []digest.Digest
		if refs.Config != nil {
			blobs = append(blobs, refs.Config.Digest)
		}
		for _, l := range refs.Layers {
			blobs = append(blobs, l.Digest)
		}
		for _, b := range blobs {
			if _, err := h.store.StatBlob(context.Background(), b); err != nil {
				t.Errorf("blob %s of %s (depth %d under the pinned variant) was evicted", b, dgst, depth)
			}
		}
		for _, c := range refs.Manifests {
			check(c.Digest, depth+1)
		}
	}
	check(digest.Digest(variant), 0)
}

// TestWebhookOneSlowImageDoesNotHoldEveryMakingSlot: an admission takes a
// making slot whenever one of its images has no recorded variant, even
// when that variant is being made already (it only waits for that work,
// adding none). Anyone who can create Pods in any namespace the webhook
// watches (even Pods that then fail validation: mutation comes first,
// nothing is stored) names one slow image (many large layers on
// docker.io) in four Pods at a time: the four admissions hold all
// MaxInFlight slots for the whole webhook.timeout, again and again for as
// long as that one variant takes to make (minutes for a large image).
// Meanwhile every other tenant's Pod whose variant is not made yet is
// answered "busy" and skipped, and its variant is not even made in the
// background, so the next Pod is skipped as well. An admission that waits
// for work already under way must not keep another image's variant from
// being made. The clock is the test's; upstream holds only the slow
// image's layers.
func TestWebhookOneSlowImageDoesNotHoldEveryMakingSlot(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook(), clock: clk})
	slow := h.push(t, "mallory/slow", "v1", regtest.ImageOptions{}, motdLayer)
	victim := h.push(t, "team/app", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	release, unblock := gate(t)
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/mallory/slow/blobs/") {
			<-release
		}
		h.front.relay(w, r)
	})
	slowPod := newPod([]string{"mallory/slow@" + slow.ManifestDigest.String()}, nil, nil)
	done := make(chan struct{}, webhook.MaxInFlight)
	for range webhook.MaxInFlight {
		go func() {
			h.review(t, slowPod, reviewOpts{})
			done <- struct{}{}
		}()
	}
	waitFor(t, "the slow image's admissions to wait for its variant", func() bool { return clk.Waiting() == webhook.MaxInFlight })
	victimPod := newPod([]string{"team/app@" + victim.ManifestDigest.String()}, nil, nil)
	resp, patched := h.review(t, victimPod, reviewOpts{})
	made := 2.0 // the slow variant, and the victim's
	if resp.Patch == nil || patched.Spec.Containers[0].Image == victimPod.Spec.Containers[0].Image {
		t.Errorf("another tenant's Pod, while four admissions wait on one slow variant: patch %s, warnings %q", resp.Patch, resp.Warnings)
		made = 1
	}
	clk.Advance(webhook.DefaultTimeout)
	for range webhook.MaxInFlight {
		<-done
	}
	unblock()
	waitFor(t, "the slow variant to be made in the background", func() bool {
		return h.metric(t, "regnorm_normalizations_total", "") == made
	})
}

// TestWebhookPinsAVariantMadeInAnotherRepository: Blobs pins an index
// variant's children only when they are "cached here", which judge
// decides by the repository holding each child's original. The same
// index in a second repository (an image pushed to two repositories, a
// team's copy of a vendor's image) has its variant recorded already, made
// from the first (a 1.6.8 node pulled it there by tag: no pin); the
// second repository holds the index but not yet the children. The
// webhook writes the variant into the Pod and pins what Blobs names: the
// index's own blobs, none. Its platform manifests' configs and layers,
// which no upstream holds, are evicted as any unpinned blob, and the
// webhook does not try again for PinFor/24 (30 hours by default: the
// variant is remembered as pinned). Every blob the variant names must be
// pinned when the Pod is admitted.
func TestWebhookPinsAVariantMadeInAnotherRepository(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	var top digest.Digest
	for _, repo := range []string{"vendor/app", "team/app"} {
		amd := h.push(t, repo, "amd64", regtest.ImageOptions{}, baseLayer, xattrLayer)
		arm := h.push(t, repo, "arm64", regtest.ImageOptions{}, baseLayer)
		_, top = pushIndex(t, h, repo, "v1", amd.Manifest, arm.Manifest)
	}
	if r := h.do(t, http.MethodGet, "/v2/vendor/app/manifests/v1", containerdHeader("1.6.8")); r.status != http.StatusOK {
		t.Fatalf("the 1.6.8 node's pull of vendor/app: %d", r.status)
	}
	_, patched := h.review(t, newPod([]string{"team/app@" + top.String()}, nil, nil), reviewOpts{})
	_, variant, _ := strings.Cut(patched.Spec.Containers[0].Image, "@")
	if variant == top.String() || variant == "" {
		t.Fatalf("not replaced: %q", patched.Spec.Containers[0].Image)
	}
	if _, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1, PinFor: webhook.DefaultPinFor}, time.Now()); err != nil {
		t.Fatal(err)
	}
	index, err := h.store.GetManifest(context.Background(), "docker.io", "vendor/app", digest.Digest(variant))
	if err != nil {
		t.Fatalf("the variant's manifest: %v", err)
	}
	var children struct {
		Manifests []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(index.Content, &children); err != nil {
		t.Fatal(err)
	}
	for _, c := range children.Manifests {
		m, err := h.store.GetManifest(context.Background(), "docker.io", "vendor/app", c.Digest)
		if err != nil {
			t.Fatalf("child %s: %v", c.Digest, err)
		}
		var refs struct {
			Config struct{ Digest digest.Digest }
			Layers []struct{ Digest digest.Digest }
		}
		if err := json.Unmarshal(m.Content, &refs); err != nil {
			t.Fatal(err)
		}
		for _, b := range append([]struct{ Digest digest.Digest }{{refs.Config.Digest}}, refs.Layers...) {
			if _, err := h.store.StatBlob(context.Background(), b.Digest); err != nil {
				t.Errorf("blob %s of child %s of the variant team/app's Pod names was evicted: %v", b.Digest, c.Digest, err)
			}
		}
	}
}
