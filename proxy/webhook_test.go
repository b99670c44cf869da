package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/regnorm/regnorm/cache"
	"github.com/regnorm/regnorm/internal/containerdcfg"
	"github.com/regnorm/regnorm/internal/regtest"
	"github.com/regnorm/regnorm/proxy"
	"github.com/regnorm/regnorm/proxy/webhook"
)

// fleetWebhook is the webhook for a fleet of containerd 1.6.8 (which cannot
// unpack xattrs on symlinks) and 2.3.4 nodes.
func fleetWebhook() *proxy.WebhookOptions {
	return &proxy.WebhookOptions{Clients: []containerdcfg.Version{containerdcfg.ParseVersion("1.6.8"), containerdcfg.ParseVersion("2.3.4")}}
}

// newPod is a Pod with these containers' images.
func newPod(containers, initContainers, ephemeral []string) *corev1.Pod {
	p := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"}}
	for i, image := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprint("c", i), Image: image})
	}
	for i, image := range initContainers {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: fmt.Sprint("i", i), Image: image})
	}
	for i, image := range ephemeral {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: fmt.Sprint("e", i), Image: image}})
	}
	return p
}

// reviewOpts say how a Pod is admitted: a creation unless operation and
// subResource say otherwise.
type reviewOpts struct {
	operation   admissionv1.Operation
	subResource string
	dryRun      bool
	// old is the Pod as it was, for an update (the API server sends it
	// as oldObject).
	old *corev1.Pod
}

// review sends p to the webhook as the API server would, and returns its
// answer, checked to be an allowed AdmissionReview of the same uid, and
// the Pod with the answer's patch applied (as the API server applies it).
func (h *harness) review(t *testing.T, p *corev1.Pod, o reviewOpts) (*admissionv1.AdmissionResponse, *corev1.Pod) {
	t.Helper()
	if o.operation == "" {
		o.operation = admissionv1.Create
	}
	object, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	uid := types.UID(fmt.Sprintf("uid-%d", time.Now().UnixNano()))
	req := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:         uid,
			Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			SubResource: o.subResource,
			Namespace:   p.Namespace,
			Name:        p.Name,
			Operation:   o.operation,
			Object:      runtime.RawExtension{Raw: object},
			DryRun:      &o.dryRun,
		},
	}
	if o.old != nil {
		old, err := json.Marshal(o.old)
		if err != nil {
			t.Fatal(err)
		}
		req.Request.OldObject = runtime.RawExtension{Raw: old}
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	status, answer := h.postReview(t, body)
	if status != http.StatusOK {
		t.Fatalf("review: %d %s", status, answer)
	}
	var got admissionv1.AdmissionReview
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("the answer is not an AdmissionReview: %v: %s", err, answer)
	}
	if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Response == nil {
		t.Fatalf("the answer is not an admission.k8s.io/v1 AdmissionReview with a response: %s", answer)
	}
	resp := got.Response
	if resp.UID != uid || !resp.Allowed {
		t.Fatalf("answer uid %q allowed %v, want %q allowed", resp.UID, resp.Allowed, uid)
	}
	if resp.Patch == nil {
		if resp.PatchType != nil {
			t.Fatalf("patch type %s without a patch", *resp.PatchType)
		}
		return resp, p
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("the patch is no JSONPatch: %v: %s", err, resp.Patch)
	}
	patched, err := patch.Apply(object)
	if err != nil {
		t.Fatalf("the patch does not apply: %v: %s", err, resp.Patch)
	}
	var out corev1.Pod
	if err := json.Unmarshal(patched, &out); err != nil {
		t.Fatal(err)
	}
	return resp, &out
}

// postReview posts body to the webhook's /mutate.
func (h *harness) postReview(t *testing.T, body []byte) (int, []byte) {
	t.Helper()
	if h.webhookURL == "" {
		t.Fatal("the harness has no webhook")
	}
	resp, err := boundedClient.Post(h.webhookURL+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, answer
}

// variantsOf is the Pod's regnorm.dev/variants annotation.
func variantsOf(t *testing.T, p *corev1.Pod) map[string]string {
	t.Helper()
	v, ok := p.Annotations[webhook.VariantsAnnotation]
	if !ok {
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		t.Fatalf("annotation %s = %q: %v", webhook.VariantsAnnotation, v, err)
	}
	return m
}

// webhookResults are regnorm_webhook_images_total's series.
func (h *harness) webhookResults(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range webhook.Results {
		out[r] = h.metric(t, "regnorm_webhook_images_total", `result="`+r+`"`)
	}
	return out
}

func wantResults(t *testing.T, h *harness, want map[string]float64) {
	t.Helper()
	got := h.webhookResults(t)
	for _, r := range webhook.Results {
		if got[r] != want[r] {
			t.Errorf("regnorm_webhook_images_total{result=%q} = %v, want %v", r, got[r], want[r])
		}
	}
}

// TestWebhookPinsTheFleetsVariant: a Pod pinned by digest to an image that
// containerd 1.6.8 cannot unpack (a symlink with xattrs) is written with
// the variant the whole fleet can run, name and tag kept as written; the
// annotation says what was replaced. A clean image by digest, an image by
// tag and one of a registry regnorm does not mirror are left as written.
// The variant's blobs are pinned: eviction over the size limit keeps them,
// and takes the original's layer the variant does not name. The patched
// Pod reviewed again (reinvocation) is left as it is.
func TestWebhookPinsTheFleetsVariant(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook(), tagTTL: time.Hour})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	clean := h.push(t, "library/clean", "v1", regtest.ImageOptions{}, baseLayer)

	asWritten := "ansible/creator-ee:v0.5.0@" + broken.ManifestDigest.String()
	asInit := "docker.io/ansible/creator-ee@" + broken.ManifestDigest.String()
	untouched := []string{
		"docker.io/library/clean@" + clean.ManifestDigest.String(),
		"ansible/creator-ee:v0.5.0",
		"registry.example/ansible/creator-ee@" + broken.ManifestDigest.String(),
	}
	p := newPod(append([]string{asWritten}, untouched...), []string{asInit}, nil)
	resp, patched := h.review(t, p, reviewOpts{})
	if resp.Patch == nil {
		t.Fatalf("no patch; warnings %q", resp.Warnings)
	}
	variant, ok := strings.CutPrefix(patched.Spec.Containers[0].Image, "ansible/creator-ee:v0.5.0@")
	if !ok || variant == broken.ManifestDigest.String() {
		t.Fatalf("the container names %q, want the variant with name and tag kept", patched.Spec.Containers[0].Image)
	}
	if got, want := patched.Spec.InitContainers[0].Image, "docker.io/ansible/creator-ee@"+variant; got != want {
		t.Errorf("the init container names %q, want %q", got, want)
	}
	for i, image := range untouched {
		if got := patched.Spec.Containers[i+1].Image; got != image {
			t.Errorf("container %d: %q became %q", i+1, image, got)
		}
	}
	if got, want := variantsOf(t, patched), map[string]string{asWritten: patched.Spec.Containers[0].Image, asInit: patched.Spec.InitContainers[0].Image}; !equalMaps(got, want) {
		t.Errorf("annotation %v, want %v", got, want)
	}
	wantResults(t, h, map[string]float64{webhook.Replaced: 2, webhook.Clean: 1, webhook.Skipped: 2})

	// The variant 1.6.8 runs: its layers have no xattr on a symlink.
	r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/"+variant, containerdAccept)
	if r.status != http.StatusOK || digest.FromBytes(r.body).String() != variant {
		t.Fatalf("GET the variant: %d, digest %s", r.status, digest.FromBytes(r.body))
	}
	var m struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(r.body, &m); err != nil || len(m.Layers) != 2 {
		t.Fatalf("the variant's manifest: %v %s", err, r.body)
	}
	if m.Layers[1].Digest == digest.FromBytes(broken.Layers[1]) {
		t.Fatal("the variant keeps the xattr layer")
	}

	// Pinned: eviction down to nothing keeps what the variant names.
	res, err := h.store.Evict(context.Background(), cache.EvictionPolicy{MaxBytes: 1, PinFor: webhook.DefaultPinFor}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, dgst := range []digest.Digest{m.Config.Digest, m.Layers[0].Digest, m.Layers[1].Digest} {
		if _, err := h.store.StatBlob(context.Background(), dgst); err != nil {
			t.Errorf("the variant's blob %s was evicted: %v (%+v)", dgst, err, res)
		}
	}
	if _, err := h.store.StatBlob(context.Background(), digest.FromBytes(broken.Layers[1])); err == nil {
		t.Errorf("the original's xattr layer, which no Pod names, was kept (%+v)", res)
	}

	// Reinvocation: the webhook's own output is left as it is, known for
	// a variant by its record: nothing is normalized again.
	normalizations := h.metric(t, "regnorm_normalizations_total", "")
	again, _ := h.review(t, patched, reviewOpts{})
	if again.Patch != nil || len(again.Warnings) > 0 {
		t.Fatalf("the patched Pod reviewed again: patch %s, warnings %q", again.Patch, again.Warnings)
	}
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != normalizations {
		t.Errorf("the patched Pod reviewed again: %v normalizations of the variant", got-normalizations)
	}
	wantResults(t, h, map[string]float64{webhook.Replaced: 2, webhook.Clean: 1 + 3, webhook.Skipped: 2 + 2})
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestWebhookVariantIsServedWhereTheOriginalIs: the variant the webhook
// wrote into a Pod is pulled by digest, by a fresh process's client, from
// the repository the Pod names, as the original would be; another
// repository of the same upstream does not serve it.
func TestWebhookVariantIsServedWhereTheOriginalIs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	h.push(t, "team/other", "v1", regtest.ImageOptions{}, oneFile)
	_, patched := h.review(t, newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil), reviewOpts{})
	_, variant, _ := strings.Cut(patched.Spec.Containers[0].Image, "@")
	if variant == broken.ManifestDigest.String() || variant == "" {
		t.Fatalf("not replaced: %q", patched.Spec.Containers[0].Image)
	}

	h.restart(t) // nothing remembered in memory: what the cache records
	r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/manifests/"+variant, containerdHeader("1.6.8"))
	if r.status != http.StatusOK || digest.FromBytes(r.body).String() != variant {
		t.Fatalf("a fresh client's pull of the variant: %d, digest %s", r.status, digest.FromBytes(r.body))
	}
	var m struct {
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal(r.body, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("the variant: %v", err)
	}
	made := m.Layers[len(m.Layers)-1].Digest
	if r := h.do(t, http.MethodGet, "/v2/ansible/creator-ee/blobs/"+made.String(), nil); r.status != http.StatusOK || digest.FromBytes(r.body) != made {
		t.Fatalf("the repackaged layer: %d", r.status)
	}
	if r := h.do(t, http.MethodGet, "/v2/team/other/manifests/"+variant, containerdAccept); r.status != http.StatusNotFound {
		t.Fatalf("another repository served the variant: %d", r.status)
	}
	if r := h.do(t, http.MethodGet, "/v2/team/other/blobs/"+made.String(), nil); r.status != http.StatusNotFound {
		t.Fatalf("another repository served the repackaged layer: %d", r.status)
	}
}

// TestWebhookSkipsForwardedCredentials: an upstream read with the clients'
// own credentials is not read by the webhook, which has none: the image is
// left as written and nothing is asked upstream.
func TestWebhookSkipsForwardedCredentials(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook(), forward: true})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	before := h.front.count()
	resp, _ := h.review(t, newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil), reviewOpts{})
	if resp.Patch != nil {
		t.Fatalf("patched: %s", resp.Patch)
	}
	if got := h.front.count(); got != before {
		t.Errorf("%d upstream requests", got-before)
	}
	wantResults(t, h, map[string]float64{webhook.Skipped: 1})
}

// holdBlobs has the upstream hold every blob download until unblock.
func (h *harness) holdBlobs(t *testing.T) (unblock func()) {
	release, unblock := gate(t)
	h.front.set(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			<-release
		}
		h.front.relay(w, r)
	})
	return unblock
}

// TestWebhookPendingVariant: a variant not made within webhook.timeout is
// left to the background: the Pod is admitted as written with a warning,
// and a later Pod gets the variant. The clock is the test's and upstream
// holds the layers until the test releases them.
func TestWebhookPendingVariant(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	wh := fleetWebhook()
	wh.Timeout = 10 * time.Second
	h := newHarness(t, harnessOptions{webhook: wh, clock: clk})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	unblock := h.holdBlobs(t)

	p := newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil)
	type answer struct {
		resp *admissionv1.AdmissionResponse
		pod  *corev1.Pod
	}
	answers := make(chan answer, 1)
	go func() {
		resp, patched := h.review(t, p, reviewOpts{})
		answers <- answer{resp, patched}
	}()
	waitFor(t, "the admission to wait for its variant", func() bool { return clk.Waiting() == 1 })
	clk.Advance(10 * time.Second)
	a := <-answers
	if a.resp.Patch != nil || len(a.resp.Warnings) != 1 || !strings.Contains(a.resp.Warnings[0], "making the variant") {
		t.Fatalf("past the timeout: patch %s, warnings %q", a.resp.Patch, a.resp.Warnings)
	}
	wantResults(t, h, map[string]float64{webhook.Pending: 1})

	unblock()
	waitFor(t, "the variant to be made in the background", func() bool {
		return h.metric(t, "regnorm_normalizations_total", `result="normalized"`) == 1
	})
	resp, patched := h.review(t, p, reviewOpts{})
	if resp.Patch == nil || patched.Spec.Containers[0].Image == p.Spec.Containers[0].Image {
		t.Fatalf("a later Pod: patch %s, image %q", resp.Patch, patched.Spec.Containers[0].Image)
	}
	wantResults(t, h, map[string]float64{webhook.Pending: 1, webhook.Replaced: 1})
}

// TestWebhookOutOfTime: images of one admission are worked on four at a
// time; an image whose turn comes once webhook.timeout is spent (four cold
// images before it, each waiting its variant to the end) is left as written
// with a warning that says so, not counted an error.
func TestWebhookOutOfTime(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	wh := fleetWebhook()
	wh.Timeout = 10 * time.Second
	h := newHarness(t, harnessOptions{webhook: wh, clock: clk})
	var images []string
	for i := range 5 {
		repo := fmt.Sprintf("team/app%d", i)
		img := h.push(t, repo, "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
		images = append(images, repo+"@"+img.ManifestDigest.String())
	}
	unblock := h.holdBlobs(t)

	answers := make(chan *admissionv1.AdmissionResponse, 1)
	go func() {
		resp, _ := h.review(t, newPod(images, nil, nil), reviewOpts{})
		answers <- resp
	}()
	waitFor(t, "four images to wait for their variants", func() bool { return clk.Waiting() == 4 })
	clk.Advance(10 * time.Second)
	resp := <-answers
	if resp.Patch != nil {
		t.Fatalf("past the timeout: patch %s", resp.Patch)
	}
	if !slices.ContainsFunc(resp.Warnings, func(w string) bool { return strings.Contains(w, "webhook.timeout") }) {
		t.Errorf("warnings %q: none says the admission's time was spent", resp.Warnings)
	}
	wantResults(t, h, map[string]float64{webhook.Pending: 4, webhook.Skipped: 1})
	// The four go on in the background: they end before the cache's
	// directory is removed.
	unblock()
	waitFor(t, "the four variants to be made in the background", func() bool {
		return h.metric(t, "regnorm_normalizations_total", `result="normalized"`) == 4
	})
}

// TestWebhookDryRun: a dry run starts no work (nothing is asked upstream,
// nothing made, nothing pinned) and uses only what is recorded: an image
// whose variant is not recorded is left as written, one whose variant is
// is replaced.
func TestWebhookDryRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	p := newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil)

	before := h.front.count()
	resp, _ := h.review(t, p, reviewOpts{dryRun: true})
	if resp.Patch != nil {
		t.Fatalf("a dry run of a cold image patched: %s", resp.Patch)
	}
	if got := h.front.count(); got != before {
		t.Errorf("a dry run sent %d upstream requests", got-before)
	}
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != 0 {
		t.Errorf("a dry run computed %v normalizations", got)
	}
	if _, err := os.Stat(filepath.Join(h.root, "pinned")); !os.IsNotExist(err) {
		t.Errorf("a dry run pinned: %v", err)
	}
	wantResults(t, h, map[string]float64{webhook.Skipped: 1})

	_, real := h.review(t, p, reviewOpts{})
	before = h.front.count()
	normalizations := h.metric(t, "regnorm_normalizations_total", "")
	resp, dry := h.review(t, p, reviewOpts{dryRun: true})
	if resp.Patch == nil || dry.Spec.Containers[0].Image != real.Spec.Containers[0].Image {
		t.Fatalf("a dry run of a recorded variant: patch %s, image %q, want %q", resp.Patch, dry.Spec.Containers[0].Image, real.Spec.Containers[0].Image)
	}
	if got := h.front.count(); got != before {
		t.Errorf("a dry run sent %d upstream requests", got-before)
	}
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != normalizations {
		t.Errorf("a dry run computed %v normalizations", got-normalizations)
	}
	wantResults(t, h, map[string]float64{webhook.Skipped: 1, webhook.Replaced: 2})
}

// TestWebhookDryRunWritesNoLink: a dry run's answer from what is recorded
// writes nothing, not even the repository link that admitting a variant
// through its source remembers (sideEffects: NoneOnDryRun). The variant is
// made for one repository; another holds the same original (a node pulled
// it there by digest), so the variant is admitted there through its source:
// the dry run replaces the image, and the link stays unwritten.
func TestWebhookDryRunWritesNoLink(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	copied := h.push(t, "team/copy", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	if copied.ManifestDigest != broken.ManifestDigest {
		t.Fatal("the copy is another image")
	}
	_, made := h.review(t, newPod([]string{"ansible/creator-ee@" + broken.ManifestDigest.String()}, nil, nil), reviewOpts{})
	_, variant, _ := strings.Cut(made.Spec.Containers[0].Image, "@")
	if variant == broken.ManifestDigest.String() {
		t.Fatal("not replaced")
	}
	if r := h.do(t, http.MethodGet, "/v2/team/copy/manifests/"+broken.ManifestDigest.String(), containerdHeader("2.3.4")); r.status != http.StatusOK {
		t.Fatalf("the node's pull of team/copy by digest: %d", r.status)
	}
	ctx := context.Background()
	if linked, err := h.store.HasLink(ctx, "docker.io", "team/copy", digest.Digest(variant)); err != nil || linked {
		t.Fatalf("before the dry run, team/copy's link to the variant: %v %v", linked, err)
	}
	image := "team/copy@" + broken.ManifestDigest.String()
	_, dry := h.review(t, newPod([]string{image}, nil, nil), reviewOpts{dryRun: true})
	if got := dry.Spec.Containers[0].Image; got != "team/copy@"+variant {
		t.Fatalf("the dry run wrote %q, want the variant", got)
	}
	if linked, err := h.store.HasLink(ctx, "docker.io", "team/copy", digest.Digest(variant)); err != nil || linked {
		t.Errorf("a dry run wrote team/copy's link to the variant (%v)", err)
	}
}

// TestWebhookEphemeralContainers: an update through the
// ephemeralcontainers subresource patches the ephemeral containers only:
// the other images cannot change (and the API server drops metadata
// changes there, so no annotation is written).
func TestWebhookEphemeralContainers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	image := "ansible/creator-ee@" + broken.ManifestDigest.String()
	p := newPod([]string{image}, []string{image}, []string{image})
	resp, patched := h.review(t, p, reviewOpts{operation: admissionv1.Update, subResource: "ephemeralcontainers", old: newPod([]string{image}, []string{image}, nil)})
	if resp.Patch == nil {
		t.Fatal("no patch")
	}
	var ops []struct{ Op, Path string }
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Path != "/spec/ephemeralContainers/0/image" {
		t.Fatalf("patch %s, want the ephemeral container's image only", resp.Patch)
	}
	if patched.Spec.EphemeralContainers[0].Image == image || patched.Spec.Containers[0].Image != image || patched.Spec.InitContainers[0].Image != image {
		t.Fatalf("images: %q %q %q", patched.Spec.Containers[0].Image, patched.Spec.InitContainers[0].Image, patched.Spec.EphemeralContainers[0].Image)
	}
	// Another update of the Pod itself is no business of the webhook's.
	if resp, _ := h.review(t, p, reviewOpts{operation: admissionv1.Update}); resp.Patch != nil {
		t.Fatalf("an update of the Pod was patched: %s", resp.Patch)
	}
}

// TestWebhookEphemeralLeavesExistingOnes: an update through the
// ephemeralcontainers subresource may add ephemeral containers, never
// change one that is there already: the API server's validation
// (ValidatePodEphemeralContainersUpdate) refuses the whole update with
// "existing ephemeral containers ... may not be changed", and runs after
// the mutating webhooks. So a second kubectl debug of a Pod whose first
// debug container still names an original (admitted while its variant
// was pending, or before the webhook was on) must get a patch of the new
// container only; else the webhook makes kubectl debug fail.
func TestWebhookEphemeralLeavesExistingOnes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	image := "ansible/creator-ee@" + broken.ManifestDigest.String()
	old := newPod([]string{image}, nil, []string{image}) // e0, added before
	p := newPod([]string{image}, nil, []string{image, image})
	resp, patched := h.review(t, p, reviewOpts{operation: admissionv1.Update, subResource: "ephemeralcontainers", old: old})
	var ops []struct{ Path string }
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatalf("patch %s: %v", resp.Patch, err)
	}
	if len(ops) != 1 || ops[0].Path != "/spec/ephemeralContainers/1/image" {
		t.Errorf("patch %s, want e1's image only: the API server compares the rest with oldObject", resp.Patch)
	}
	if got := patched.Spec.EphemeralContainers[0].Image; got != image {
		t.Errorf("the existing ephemeral container e0 was changed to %q: the API server refuses the update", got)
	}
	if got := patched.Spec.EphemeralContainers[1].Image; got == image {
		t.Errorf("the new ephemeral container e1 kept the original %q, want its variant", got)
	}
}

// TestWebhookBounds: a body past 4 MiB is refused with 413, one that is not
// an AdmissionReview with 400 (the API server then applies the failure
// policy); a Pod of more than 256 images has the first 256 looked at and
// the rest left as written; the listener serves nothing but the webhook.
func TestWebhookBounds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)

	huge := append([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":"`), bytes.Repeat([]byte("a"), webhook.MaxBody)...)
	huge = append(huge, `"}}`...)
	if status, body := h.postReview(t, huge); status != http.StatusRequestEntityTooLarge {
		t.Errorf("a body of %d bytes: %d %s", len(huge), status, body)
	}
	for _, body := range []string{`{"apiVersion":"v1","kind":"Pod"}`, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, `not json`} {
		if status, answer := h.postReview(t, []byte(body)); status != http.StatusBadRequest {
			t.Errorf("%s: %d %s", body, status, answer)
		}
	}
	resp, err := boundedClient.Get(h.webhookURL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v2/ on the webhook's listener: %d", resp.StatusCode)
	}

	image := "ansible/creator-ee@" + broken.ManifestDigest.String()
	images := make([]string, webhook.MaxImages+44)
	for i := range images {
		images[i] = image
	}
	answer, patched := h.review(t, newPod(images, nil, nil), reviewOpts{})
	if answer.Patch == nil {
		t.Fatal("no patch")
	}
	for i, c := range patched.Spec.Containers {
		if replaced := c.Image != image; replaced != (i < webhook.MaxImages) {
			t.Fatalf("container %d of %d: %q", i, len(images), c.Image)
		}
	}
	wantResults(t, h, map[string]float64{webhook.Replaced: webhook.MaxImages, webhook.Skipped: 44})
}

// TestWebhookLeavesVariantsAlone: an image that names a variant regnorm
// made is left as written, even once the fleet needs more rules than it
// was made with (a variant of a variant would name neither the image nor
// anything a registry holds); running the webhook on its own output
// changes nothing whatever the fleet.
func TestWebhookLeavesVariantsAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{webhook: &proxy.WebhookOptions{Clients: []containerdcfg.Version{containerdcfg.ParseVersion("1.3.0")}}})
	// containerd 1.3 needs the symlink rule but not the config type's.
	img := h.push(t, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{ConfigMediaType: "application/octet-stream"}, baseLayer, xattrLayer)
	_, patched := h.review(t, newPod([]string{"ansible/creator-ee@" + img.ManifestDigest.String()}, nil, nil), reviewOpts{})
	if patched.Spec.Containers[0].Image == "ansible/creator-ee@"+img.ManifestDigest.String() {
		t.Fatal("not replaced")
	}

	h.opts.webhook = fleetWebhook() // 1.6.8 needs the config type too
	h.restart(t)
	normalizations := h.metric(t, "regnorm_normalizations_total", "")
	resp, _ := h.review(t, patched, reviewOpts{})
	if resp.Patch != nil {
		t.Fatalf("a variant was replaced: %s", resp.Patch)
	}
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != normalizations {
		t.Errorf("%v normalizations of a variant", got-normalizations)
	}
	wantResults(t, h, map[string]float64{webhook.Clean: 1})
}

// TestWebhookBusy: the making slots count variants, not admissions. With
// webhook.MaxInFlight cold variants waited for, an admission of one of
// them waits for that work too, taking no slot; one of another image is
// answered at once, left as written with the "making the variant"
// warning (pending), and its variant made in the background, up to
// webhook.MaxBackground of them; past those, an image is left as written
// at once with the "busy" warning (skipped), and nothing is made for it
// (one whose variant is recorded is answered all the same:
// TestWebhookBusyWithColdImagesStillAnswersReadyOnes). The clock is the
// test's and upstream holds the layers until the test releases them.
func TestWebhookBusy(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook(), clock: clk})
	var pods []*corev1.Pod
	for i := range webhook.MaxInFlight + webhook.MaxBackground + 1 {
		repo := fmt.Sprintf("team/app%d", i)
		img := h.push(t, repo, "v1", regtest.ImageOptions{Entrypoint: []string{repo}}, baseLayer, xattrLayer)
		pods = append(pods, newPod([]string{repo + "@" + img.ManifestDigest.String()}, nil, nil))
	}
	unblock := h.holdBlobs(t)
	waiting, behind, past := pods[:webhook.MaxInFlight], pods[webhook.MaxInFlight:webhook.MaxInFlight+webhook.MaxBackground], pods[len(pods)-1]
	done := make(chan *admissionv1.AdmissionResponse, len(waiting)+1)
	for _, p := range waiting {
		go func() {
			resp, _ := h.review(t, p, reviewOpts{})
			done <- resp
		}()
	}
	waitFor(t, "the admissions to wait for their variants", func() bool { return clk.Waiting() == webhook.MaxInFlight })
	go func() {
		resp, _ := h.review(t, waiting[0], reviewOpts{})
		done <- resp
	}()
	waitFor(t, "a second admission of a variant under way to wait for it, with no slot of its own", func() bool { return clk.Waiting() == webhook.MaxInFlight+1 })
	for i, p := range behind {
		resp, _ := h.review(t, p, reviewOpts{})
		if resp.Patch != nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "making the variant") {
			t.Fatalf("image %d past %d variants waited for: patch %s, warnings %q; want it made behind them", i, webhook.MaxInFlight, resp.Patch, resp.Warnings)
		}
	}
	wantResults(t, h, map[string]float64{webhook.Pending: webhook.MaxBackground})
	resp, _ := h.review(t, past, reviewOpts{})
	if resp.Patch != nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "busy") {
		t.Fatalf("past %d variants waited for and %d made behind: patch %s, warnings %q", webhook.MaxInFlight, webhook.MaxBackground, resp.Patch, resp.Warnings)
	}
	wantResults(t, h, map[string]float64{webhook.Pending: webhook.MaxBackground, webhook.Skipped: 1})
	clk.Advance(webhook.DefaultTimeout)
	for range len(waiting) + 1 {
		<-done
	}
	wantResults(t, h, map[string]float64{webhook.Skipped: 1, webhook.Pending: webhook.MaxBackground + webhook.MaxInFlight + 1})
	unblock()
	waitFor(t, "the variants to be made in the background", func() bool {
		return h.metric(t, "regnorm_normalizations_total", `result="normalized"`) == webhook.MaxInFlight+webhook.MaxBackground
	})
	// The one skipped was not made: its next admission makes it.
	if got := h.metric(t, "regnorm_normalizations_total", ""); got != webhook.MaxInFlight+webhook.MaxBackground {
		t.Errorf("%v normalizations, want %d: the image skipped as busy was made", got, webhook.MaxInFlight+webhook.MaxBackground)
	}
}

// TestWebhookBusyWithColdImagesStillAnswersReadyOnes: four admissions
// waiting on cold images (their variants take the whole webhook.timeout)
// must not turn away a Pod whose variant is made and cached already, an
// answer of a few cache reads. Today every admission past MaxInFlight is
// skipped at once, so for up to webhook.timeout (10 s by default) each Pod
// created in the cluster runs its original, ready variant or not: a
// ReplicaSet's batch of Pods after a few cold images, or a rollout beside
// a new image, gets originals that the fleet's old containerd nodes cannot
// run. The clock is the test's and upstream holds the cold layers.
func TestWebhookBusyWithColdImagesStillAnswersReadyOnes(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := newHarness(t, harnessOptions{webhook: fleetWebhook(), clock: clk})
	ready := h.push(t, "team/ready", "v1", regtest.ImageOptions{}, baseLayer, xattrLayer)
	readyPod := newPod([]string{"team/ready@" + ready.ManifestDigest.String()}, nil, nil)
	if resp, _ := h.review(t, readyPod, reviewOpts{}); resp.Patch == nil {
		t.Fatal("the ready image's first admission was not replaced")
	}
	cold := h.push(t, "team/cold", "v1", regtest.ImageOptions{}, oneFile)
	coldPod := newPod([]string{"team/cold@" + cold.ManifestDigest.String()}, nil, nil)
	unblock := h.holdBlobs(t)
	done := make(chan struct{}, webhook.MaxInFlight)
	for range webhook.MaxInFlight {
		go func() {
			h.review(t, coldPod, reviewOpts{})
			done <- struct{}{}
		}()
	}
	waitFor(t, "the cold admissions to wait for their variant", func() bool { return clk.Waiting() == webhook.MaxInFlight })
	resp, patched := h.review(t, readyPod, reviewOpts{})
	if resp.Patch == nil || patched.Spec.Containers[0].Image == readyPod.Spec.Containers[0].Image {
		t.Errorf("a Pod whose variant is cached, while cold images are at work: patch %s, warnings %q", resp.Patch, resp.Warnings)
	}
	clk.Advance(webhook.DefaultTimeout)
	for range webhook.MaxInFlight {
		<-done
	}
	unblock()
	waitFor(t, "the cold variant to be made in the background", func() bool {
		return h.metric(t, "regnorm_normalizations_total", "") == 2
	})
}

// BenchmarkWebhookAdmission: an admission of a Pod whose image's variant
// is recorded (every Pod of a Deployment after the first), and of one whose
// image needs nothing (clean), over HTTP as the API server sends them. The
// first admission of each, which makes the variant (or records the verdict)
// from a cold cache, is logged.
//
//	go test ./proxy -run '^$' -bench WebhookAdmission
func BenchmarkWebhookAdmission(b *testing.B) {
	h := newHarness(b, harnessOptions{webhook: fleetWebhook()})
	broken := h.push(b, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{}, baseLayer, xattrLayer)
	clean := h.push(b, "library/clean", "v1", regtest.ImageOptions{}, baseLayer)
	for name, image := range map[string]string{
		"recorded variant": "ansible/creator-ee@" + broken.ManifestDigest.String(),
		"clean":            "library/clean@" + clean.ManifestDigest.String(),
	} {
		p := newPod([]string{image}, nil, nil)
		object, _ := json.Marshal(p)
		dry := false
		body, _ := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: "u", Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: object}, DryRun: &dry}})
		post := func() {
			resp, err := boundedClient.Post(h.webhookURL+"/mutate", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		start := time.Now()
		post() // the variant made, or the verdict recorded
		b.Logf("%s: first admission %s", name, time.Since(start))
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				post()
			}
		})
	}
}
