//go:build e2e

package e2e

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

// smokeWebhook is an admission webhook in the test: /mutate records the
// image it saw in an annotation (sawAnnotation); /pin pins a tag to a digest,
// as k8s-digester or Kyverno's mutateDigest do. It keeps every review it got.
type smokeWebhook struct {
	mu      sync.Mutex
	reviews []smokeReview
}

type smokeReview struct {
	Path, Namespace, Name, Image string
	DryRun                       bool
}

const (
	sawAnnotation = "smoke.regnorm.dev/saw"
	pinnedDigest  = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func (s *smokeWebhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := readReview(w, r)
	if !ok {
		return
	}
	image := req.Object.Spec.Containers[0].Image
	s.mu.Lock()
	s.reviews = append(s.reviews, smokeReview{r.URL.Path, req.Namespace, req.Name, image, req.DryRun})
	s.mu.Unlock()

	var patch []map[string]any
	switch r.URL.Path {
	case "/mutate":
		if req.Object.Metadata.Annotations == nil {
			patch = []map[string]any{{"op": "add", "path": "/metadata/annotations", "value": map[string]string{sawAnnotation: image}}}
		} else {
			patch = []map[string]any{{"op": "add", "path": "/metadata/annotations/" + strings.ReplaceAll(sawAnnotation, "/", "~1"), "value": image}}
		}
	case "/pin":
		if !strings.Contains(image, "@") {
			patch = []map[string]any{{"op": "replace", "path": "/spec/containers/0/image", "value": image + "@" + pinnedDigest}}
		}
	}
	answerReview(w, req.UID, patch)
}

// seen lists the reviews of path for the object namespace/name.
func (s *smokeWebhook) seen(path, namespace, name string) []smokeReview {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []smokeReview
	for _, r := range s.reviews {
		if r.Path == path && r.Namespace == namespace && r.Name == name {
			out = append(out, r)
		}
	}
	return out
}

// TestKubeAPIServerAdmitsThroughAWebhook: the real kube-apiserver of the
// suite calls a mutating webhook registered with a url clientConfig on
// 127.0.0.1 and its caBundle (the way the regnorm webhook's test registers
// the chart's configuration), stores what the webhook's JSONPatch made of a
// Pod, runs it again after a later webhook changed the image
// (reinvocationPolicy IfNeeded), calls it on dry runs without storing, and
// leaves a namespace with the opt-out label alone. With the webhook server
// gone, failurePolicy Ignore admits the Pod unchanged.
func TestKubeAPIServerAdmitsThroughAWebhook(t *testing.T) {
	k := startKube(t)
	hook := &smokeWebhook{}
	srv := httptest.NewTLSServer(hook)
	defer srv.Close()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	k.createNamespace(t, "apps", map[string]string{"team": "apps"})
	k.createNamespace(t, "opted-out", map[string]string{"smoke.regnorm.dev/skip": "true"})
	// As the chart writes it (a Service); pointWebhooksAt swaps in the url.
	cfg := parseYAML(t, `
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: smoke
webhooks:
- name: smoke.regnorm.dev
  clientConfig:
    service: {namespace: regnorm, name: regnorm, path: /mutate}
  rules:
  - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}
  namespaceSelector:
    matchExpressions:
    - {key: smoke.regnorm.dev/skip, operator: DoesNotExist}
  failurePolicy: Ignore
  sideEffects: None
  reinvocationPolicy: IfNeeded
  matchPolicy: Equivalent
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
`)
	pointWebhooksAt(t, cfg, srv.URL+"/mutate", caPEM)
	k.create(t, cfg)
	k.waitAdmission(t, newPod("apps", "probe", "example.com/probe:1"), func(p map[string]any) bool {
		return annotations(p)[sawAnnotation] != ""
	})
	// The pinning webhook, registered after: it runs after smoke.regnorm.dev
	// (configurations in name order), which then runs again.
	pin := parseYAML(t, `
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: zz-pin
webhooks:
- name: pin.regnorm.dev
  clientConfig: {url: placeholder}
  rules:
  - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}
  namespaceSelector:
    matchExpressions:
    - {key: team, operator: In, values: [apps]}
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
`)
	pointWebhooksAt(t, pin, srv.URL+"/pin", caPEM)
	k.create(t, pin)
	k.waitAdmission(t, newPod("apps", "probe", "example.com/probe:2"), func(p map[string]any) bool {
		return slices.Equal(podImages(p), []string{"example.com/probe:2@" + pinnedDigest})
	})

	t.Run("mutated and stored", func(t *testing.T) {
		const image = "example.com/app@" + pinnedDigest
		k.create(t, newPod("apps", "pinned", image))
		pod := k.getPod(t, "apps", "pinned")
		if got := annotations(pod)[sawAnnotation]; got != image {
			t.Errorf("stored Pod's %s annotation is %q, want %q (annotations: %v)", sawAnnotation, got, image, annotations(pod))
		}
		if got := hook.seen("/mutate", "apps", "pinned"); len(got) != 1 {
			t.Errorf("the webhook saw the Pod %d times (%v), want once: nothing changed it after", len(got), got)
		}
	})

	t.Run("reinvoked after a later webhook pinned the tag", func(t *testing.T) {
		k.create(t, newPod("apps", "tagged", "example.com/app:1.0"))
		pod := k.getPod(t, "apps", "tagged")
		pinned := "example.com/app:1.0@" + pinnedDigest
		if got := podImages(pod); !slices.Equal(got, []string{pinned}) {
			t.Errorf("stored Pod's images %v, want [%s]", got, pinned)
		}
		if got := annotations(pod)[sawAnnotation]; got != pinned {
			t.Errorf("stored Pod's %s annotation is %q, want %q: the webhook was not run again on the pinned image",
				sawAnnotation, got, pinned)
		}
		got := hook.seen("/mutate", "apps", "tagged")
		if len(got) != 2 || got[0].Image != "example.com/app:1.0" || got[1].Image != pinned {
			t.Errorf("the webhook saw %v, want the tag, then the pinned image", got)
		}
	})

	t.Run("dry run goes through the webhook and stores nothing", func(t *testing.T) {
		out := k.dryRunCreate(t, newPod("apps", "dry", "example.com/app@"+pinnedDigest))
		if annotations(out)[sawAnnotation] == "" {
			t.Errorf("dry-run answer without the annotation: %v", annotations(out))
		}
		if got := hook.seen("/mutate", "apps", "dry"); len(got) != 1 || !got[0].DryRun {
			t.Errorf("the webhook saw %v, want one review marked dryRun", got)
		}
		if _, err := k.tryGet("v1", "Pod", "apps", "dry"); !isNotFound(err) {
			t.Errorf("get the dry-run Pod: %v, want NotFound", err)
		}
	})

	t.Run("opted-out namespace untouched", func(t *testing.T) {
		const image = "example.com/app:1.0"
		k.create(t, newPod("opted-out", "plain", image))
		pod := k.getPod(t, "opted-out", "plain")
		if a := annotations(pod); a[sawAnnotation] != "" {
			t.Errorf("stored Pod annotated: %v", a)
		}
		if got := podImages(pod); !slices.Equal(got, []string{image}) {
			t.Errorf("stored Pod's images %v, want [%s]", got, image)
		}
		if got := hook.seen("/mutate", "opted-out", "plain"); len(got) != 0 {
			t.Errorf("the webhook was called for the opted-out namespace: %v", got)
		}
	})

	// Last: the webhook server goes away.
	t.Run("webhook down: failurePolicy Ignore admits unchanged", func(t *testing.T) {
		srv.Close()
		failOpen := func() float64 {
			return metricIn(t, k.metrics(t), "apiserver_admission_webhook_fail_open_count", `name="smoke.regnorm.dev"`)
		}
		// The counter's series appears at its first increment: absent, no
		// call has failed open yet (a slow probe might have).
		before := 0.0
		if strings.Contains(k.metrics(t), `apiserver_admission_webhook_fail_open_count{name="smoke.regnorm.dev"`) {
			before = failOpen()
		}
		const image = "example.com/app@" + pinnedDigest
		k.create(t, newPod("apps", "unreached", image))
		pod := k.getPod(t, "apps", "unreached")
		if a := annotations(pod); a[sawAnnotation] != "" {
			t.Errorf("stored Pod annotated: %v", a)
		}
		if got := podImages(pod); !slices.Equal(got, []string{image}) {
			t.Errorf("stored Pod's images %v, want [%s]", got, image)
		}
		if got := failOpen(); got != before+1 {
			t.Errorf("apiserver_admission_webhook_fail_open_count{name=smoke.regnorm.dev} went from %v to %v, want one more: the call was not tried", before, got)
		}
	})
}
