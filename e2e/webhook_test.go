//go:build e2e

package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// TestWebhookPinsVariantsForOldNodes: a real kube-apiserver calls regnorm's
// admission webhook, registered with the chart's own configuration (its
// clientConfig pointed at regnorm's webhook listener on 127.0.0.1). A Pod
// pinned by digest to an image containerd 1.6.8 cannot unpack (a symlink
// with a user.* xattr) is stored naming the variant every version of the
// fleet (webhook.clients: 1.6.8 and 2.3.4) can run, with the annotation
// saying so; a Pod whose tag a later webhook pins to the original digest
// (as k8s-digester or Kyverno's mutateDigest do) ends with the variant too
// (reinvocation); a clean image, a tag, an unmirrored registry and an
// opted-out namespace are left as written. A real containerd 1.6.8 then
// pulls and runs the image the stored Pod names, through regnorm, where the
// original fails. With regnorm down, a Pod is admitted unchanged
// (failurePolicy: Ignore), and a node that has not pulled the variant yet
// cannot: the upstream never had that digest (what pinning costs).
func TestWebhookPinsVariantsForOldNodes(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	broken := pushXattrImage(t, registryURL, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{})
	clean := pushHello(t, registryURL, "library/hello", "v1", regtest.ImageOptions{})
	brokenRef := "docker.io/ansible/creator-ee@" + broken.ManifestDigest.String()
	cleanRef := "docker.io/library/hello@" + clean.ManifestDigest.String()

	// The API server presents a client certificate to regnorm's webhook
	// (its AdmissionConfiguration's kubeconfig names one for the webhook's
	// address), and regnorm answers no caller without one its CA signed.
	dir := t.TempDir()
	hookAddr := freeAddr(t)
	callers := newTestCA(t, "regnorm-e2e-webhook-callers")
	callersCA := filepath.Join(dir, "callers-ca.crt")
	if err := os.WriteFile(callersCA, callers.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey := callers.issue(t, "kube-apiserver", nil).write(t, dir, "apiserver-webhook-client")
	kubeconfig := filepath.Join(dir, "webhooks.kubeconfig")
	admission := filepath.Join(dir, "admission.yaml")
	for file, content := range map[string]string{
		// The user is the webhook's host:port (a Service-based clientConfig
		// would use <service>.<namespace>.svc).
		kubeconfig: fmt.Sprintf("apiVersion: v1\nkind: Config\nusers:\n- name: %q\n  user:\n    client-certificate: %s\n    client-key: %s\n", hookAddr, clientCert, clientKey),
		admission: "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: MutatingAdmissionWebhook\n  configuration:\n" +
			"    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: " + kubeconfig + "\n",
	} {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	k := startKube(t, "--admission-control-config-file="+admission)
	certFile, keyFile := k.CA.issue(t, "regnorm-webhook", nil, "127.0.0.1").write(t, dir, "webhook")
	proxyURL, proxy := startRegnorm(t, registryURL, fmt.Sprintf(`webhook:
  listen: %s
  certFile: %s
  keyFile: %s
  clientCAFile: %s
  clientNames: [kube-apiserver]
  clients: ["1.6.8", "2.3.4"]
  timeout: 25s
`, hookAddr, certFile, keyFile, callersCA))

	cfg := renderChartObject(t, `webhook: {enabled: true, clients: ["1.6.8", "2.3.4"], timeout: 25s, timeoutSeconds: 30}`, "MutatingWebhookConfiguration", "regnorm-pinned-digests")
	pointWebhooksAt(t, cfg, "https://"+hookAddr+"/mutate", k.CA.PEM)
	k.create(t, cfg)
	k.createNamespace(t, "apps", map[string]string{"team": "apps"})
	k.createNamespace(t, "opted-out", map[string]string{"regnorm.dev/webhook": "disabled"})
	// The configuration is taken up once regnorm is asked: a dry run
	// changes nothing of a cold image, so the probe counts regnorm's
	// answers.
	k.waitAdmission(t, newPod("apps", "probe", cleanRef), func(map[string]any) bool {
		return metric(t, proxyURL, "regnorm_webhook_images_total") > 0
	})
	// Anyone else is refused at the handshake: no certificate, or one
	// another CA signed for the same name.
	for name, certs := range map[string][]tls.Certificate{
		"no client certificate":       nil,
		"another CA's kube-apiserver": {k.CA.issue(t, "kube-apiserver", nil).tlsCertificate(t)},
	} {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}}
		if resp, err := c.Post("https://"+hookAddr+"/mutate", "application/json", strings.NewReader(`{}`)); err == nil {
			resp.Body.Close()
			t.Errorf("%s: the webhook answered %d", name, resp.StatusCode)
		}
		c.CloseIdleConnections()
	}

	// A pinning webhook after regnorm's (configurations run in name
	// order): it pins the broken image's tag to the original digest.
	pinner := httptest.NewUnstartedServer(pinTags(map[string]string{
		"docker.io/ansible/creator-ee:v0.5.0": broken.ManifestDigest.String(),
	}))
	pinner.TLS = &tls.Config{Certificates: []tls.Certificate{k.CA.issue(t, "pinner", nil, "127.0.0.1").tlsCertificate(t)}}
	pinner.StartTLS()
	t.Cleanup(pinner.Close)
	pin := parseYAML(t, `
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: zz-pin-digests
webhooks:
- name: pin.example.com
  clientConfig: {url: placeholder}
  rules:
  - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}
  namespaceSelector:
    matchExpressions:
    - {key: team, operator: In, values: [apps]}
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 10
`)
	pointWebhooksAt(t, pin, pinner.URL+"/pin", k.CA.PEM)
	k.create(t, pin)
	k.waitAdmission(t, newPod("apps", "probe", "docker.io/ansible/creator-ee:v0.5.0"), func(p map[string]any) bool {
		return strings.Contains(podImages(p)[0], "@sha256:")
	})

	// The Pod pinned to the broken original: its variant is made within
	// the admission (a small image; on a machine too busy for that, the
	// Pod is admitted as written, the variant is made in the background,
	// and the next Pod gets it).
	began := time.Now()
	k.create(t, newPod("apps", "pinned", brokenRef))
	firstAdmission := time.Since(began)
	pod := k.getPod(t, "apps", "pinned")
	if slices.Equal(podImages(pod), []string{brokenRef}) {
		t.Logf("the first admission (%v) left the image as written: its variant is being made", firstAdmission.Round(time.Millisecond))
		k.waitAdmission(t, newPod("apps", "pinned", brokenRef), func(p map[string]any) bool {
			return !slices.Equal(podImages(p), []string{brokenRef})
		})
		k.create(t, newPod("apps", "pinned-again", brokenRef))
		pod = k.getPod(t, "apps", "pinned-again")
	}
	images := podImages(pod)
	if len(images) != 1 || !strings.HasPrefix(images[0], "docker.io/ansible/creator-ee@sha256:") || images[0] == brokenRef {
		t.Fatalf("stored Pod names %v, want the variant of %s", images, brokenRef)
	}
	variantRef := images[0]
	var recorded map[string]string
	if err := json.Unmarshal([]byte(annotations(pod)["regnorm.dev/variants"]), &recorded); err != nil || recorded[brokenRef] != variantRef || len(recorded) != 1 {
		t.Errorf("regnorm.dev/variants = %q (%v), want {%q: %q}", annotations(pod)["regnorm.dev/variants"], err, brokenRef, variantRef)
	}
	t.Logf("first admission of the cold broken image (the variant made within it): %v", firstAdmission.Round(time.Millisecond))

	t.Run("reinvoked after another webhook pinned the tag", func(t *testing.T) {
		k.create(t, newPod("apps", "tagged", "docker.io/ansible/creator-ee:v0.5.0"))
		got := podImages(k.getPod(t, "apps", "tagged"))
		want := "docker.io/ansible/creator-ee:v0.5.0@" + strings.TrimPrefix(variantRef, "docker.io/ansible/creator-ee@")
		if !slices.Equal(got, []string{want}) {
			t.Errorf("stored Pod names %v, want [%s]: regnorm was not run again on the pinned tag", got, want)
		}
	})

	t.Run("dry run answers from what is recorded", func(t *testing.T) {
		out := k.dryRunCreate(t, newPod("apps", "dry", brokenRef))
		if got := podImages(out); !slices.Equal(got, []string{variantRef}) {
			t.Errorf("dry run answered %v, want [%s]", got, variantRef)
		}
		if _, err := k.tryGet("v1", "Pod", "apps", "dry"); !isNotFound(err) {
			t.Errorf("a dry run stored the Pod: %v", err)
		}
	})

	t.Run("left as written", func(t *testing.T) {
		for _, tt := range []struct{ namespace, name, image string }{
			{"apps", "clean", cleanRef},
			{"apps", "by-tag", "docker.io/library/hello:v1"},
			{"apps", "unmirrored", "quay.io/team/app@" + broken.ManifestDigest.String()},
			{"opted-out", "pinned", brokenRef},
		} {
			k.create(t, newPod(tt.namespace, tt.name, tt.image))
			pod := k.getPod(t, tt.namespace, tt.name)
			if got := podImages(pod); !slices.Equal(got, []string{tt.image}) {
				t.Errorf("%s/%s: stored Pod names %v, want [%s] as written", tt.namespace, tt.name, got, tt.image)
			}
			if v, ok := annotations(pod)["regnorm.dev/variants"]; ok {
				t.Errorf("%s/%s: annotated %q", tt.namespace, tt.name, v)
			}
		}
	})

	t.Run("containerd 1.6.8 runs what the stored Pod names", func(t *testing.T) {
		// The premise: the original, pinned as written, fails on 1.6.8 even
		// through regnorm (containerd checks the digest it asked for).
		probe := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
		if _, err := probe.pull(t, brokenRef); err == nil || !strings.Contains(err.Error(), "failed to extract layer") {
			t.Fatalf("pull of the original by digest on containerd 1.6.8 through regnorm: %v, want 'failed to extract layer'", err)
		}
		node := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
		if _, err := node.pull(t, variantRef); err != nil {
			t.Fatalf("pull of the stored Pod's image on containerd 1.6.8: %v", err)
		}
		if got := node.run(t, variantRef); got != "hello from regnorm e2e" {
			t.Fatalf("container printed %q", got)
		}
	})

	t.Run("regnorm down: admitted unchanged", func(t *testing.T) {
		proxy.stop()
		began := time.Now()
		k.create(t, newPod("apps", "down", brokenRef))
		took := time.Since(began)
		if got := podImages(k.getPod(t, "apps", "down")); !slices.Equal(got, []string{brokenRef}) {
			t.Errorf("stored Pod names %v, want [%s] as written", got, brokenRef)
		}
		t.Logf("Pod creation with regnorm down took %v (failurePolicy Ignore)", took.Round(time.Millisecond))

		// What pinning a variant costs: a node that has not pulled it yet
		// cannot while regnorm is down. containerd falls back from the
		// mirror to the upstream (here the test registry stands for
		// docker.io itself), which never had that digest.
		kind := containerd1620
		kind.name, kind.bin = "containerd-1.6.8", oldContainerdBin
		node := startContainerdVersion(t, kind, containerdOptions{Hosts: map[string]string{
			"docker.io": mirrorHosts(registryURL, proxyURL)}})
		// What the upstream has, the node pulls past the dead mirror.
		if _, err := node.pull(t, cleanRef); err != nil {
			t.Fatalf("pull of an original by digest with regnorm down: %v, want the upstream's", err)
		}
		began = time.Now()
		// containerd 1.6 reports the first host's error (the mirror's
		// refused connection), though the upstream was asked after it.
		_, err := node.pull(t, variantRef)
		if err == nil || !strings.Contains(err.Error(), "failed to resolve reference") {
			t.Fatalf("pull of the variant with regnorm down: %v, want it unresolved", err)
		}
		t.Logf("a node's pull of the pinned variant with regnorm down failed in %v: %v", time.Since(began).Round(time.Millisecond), err)
	})
}

// pinTags is an admission webhook that pins a container's image to a
// digest, as k8s-digester does: pins maps an image as written (by tag) to
// its digest.
func pinTags(pins map[string]string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		review, ok := readReview(w, r)
		if !ok {
			return
		}
		var patch []map[string]any
		for i, c := range review.Object.Spec.Containers {
			if dgst, ok := pins[c.Image]; ok {
				patch = append(patch, map[string]any{"op": "replace", "path": fmt.Sprintf("/spec/containers/%d/image", i), "value": c.Image + "@" + dgst})
			}
		}
		answerReview(w, review.UID, patch)
	})
}
