package deploy_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

// TestChartWebhook: with webhook.enabled the chart registers the admission
// webhook as docs/webhook.md says (its name, rules, safety settings and
// namespace selector), calls it through the Service's port webhook at
// /mutate, and gives the API server a caBundle that verifies the pod's
// certificate for the Service's DNS name; regnorm is configured to serve
// it on the container's port, with the pair mounted. Off, none of it
// renders.
func TestChartWebhook(t *testing.T) {
	t.Parallel()
	for _, o := range render(t, chartCases["defaults"]) {
		if o.GetKind() == "MutatingWebhookConfiguration" || strings.Contains(o.GetName(), "webhook") {
			t.Errorf("the webhook is off by default, but %s %s renders", o.GetKind(), o.GetName())
		}
	}
	if cfg := configMapData(t, render(t, chartCases["defaults"]), "regnorm", "regnorm.yaml"); strings.Contains(cfg, "webhook") {
		t.Errorf("the webhook is off by default, but regnorm is configured with it:\n%s", cfg)
	}

	objs := render(t, chartCases["admission webhook, generated certificate, more of the namespace selector, behind a network policy"])
	hook := checkWebhookConfiguration(t, objs, 20)
	sel, _, _ := unstructured.NestedMap(hook, "namespaceSelector")
	if fmt.Sprint(sel["matchLabels"]) != "map[team:apps]" || !strings.Contains(fmt.Sprint(sel["matchExpressions"]), "tier") {
		t.Errorf("webhook.namespaceSelector was not added: %v", sel)
	}
	ca, _, _ := unstructured.NestedString(hook, "clientConfig", "caBundle")
	secret := named(t, objs, "Secret", "regnorm-webhook-tls")
	if typ, _, _ := unstructured.NestedString(secret.Object, "type"); typ != "kubernetes.io/tls" {
		t.Errorf("the webhook's Secret is of type %q", typ)
	}
	data, _, _ := unstructured.NestedStringMap(secret.Object, "data")
	if data["ca.crt"] != ca {
		t.Error("the caBundle is not the generated CA")
	}
	verifyServing(t, ca, data["tls.crt"], "regnorm-webhook.regnorm.svc")
	cfg := configMapData(t, objs, "regnorm", "regnorm.yaml")
	for _, want := range []string{"webhook:\n  listen: \":8443\"\n  certFile: /etc/regnorm/webhook/tls.crt\n  keyFile: /etc/regnorm/webhook/tls.key\n  clients:\n    - \"1.6.8\"\n    - \"2.1\"\n  timeout: 10s\n  pinFor: 720h\n"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("regnorm.yaml lacks %q:\n%s", want, cfg)
		}
	}
	if s, _ := mountedSecret(t, find(t, objs, "Deployment"), "/etc/regnorm/webhook/tls.crt"); s != "regnorm-webhook-tls" {
		t.Errorf("the pod mounts the webhook's pair from %q", s)
	}
	ports, _, _ := unstructured.NestedSlice(container(t, find(t, objs, "Deployment")), "ports")
	if !slices.ContainsFunc(ports, func(p any) bool {
		p2 := p.(map[string]any)
		return p2["name"] == "webhook" && fmt.Sprint(p2["containerPort"]) == "8443"
	}) {
		t.Errorf("the container has no port webhook 8443: %v", ports)
	}
	// Its own Service, ClusterIP, the webhook's port only; the main
	// Service does not carry it.
	svc := named(t, objs, "Service", "regnorm-webhook")
	svcPorts, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if typ, _, _ := unstructured.NestedString(svc.Object, "spec", "type"); typ != "ClusterIP" || len(svcPorts) != 1 || !slices.ContainsFunc(svcPorts, func(p any) bool {
		p2 := p.(map[string]any)
		return p2["name"] == "webhook" && fmt.Sprint(p2["port"]) == "443" && p2["targetPort"] == "webhook"
	}) {
		t.Errorf("the webhook's Service is %s with ports %v, want ClusterIP with webhook 443 → webhook only", typ, svcPorts)
	}
	if sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector"); fmt.Sprint(sel) != "map[app.kubernetes.io/instance:regnorm app.kubernetes.io/name:regnorm]" {
		t.Errorf("the webhook's Service selects %v", sel)
	}
	if main, _, _ := unstructured.NestedSlice(named(t, objs, "Service", "regnorm").Object, "spec", "ports"); strings.Contains(fmt.Sprint(main), "webhook") {
		t.Errorf("the main Service carries the webhook's port: %v", main)
	}
	ingress, _, _ := unstructured.NestedSlice(find(t, objs, "NetworkPolicy").Object, "spec", "ingress")
	if !slices.ContainsFunc(ingress, func(r any) bool {
		r2 := r.(map[string]any)
		_, limited := r2["from"]
		return strings.Contains(fmt.Sprint(r2["ports"]), "port:webhook") && !limited
	}) {
		t.Errorf("the network policy does not open the webhook's port to the API server (from anywhere): %v", ingress)
	}

	// cert-manager: a self-signed CA chain, the serving Certificate, the CA
	// injected; or the operator's issuer.
	cm := render(t, chartCases["admission webhook with cert-manager"])
	hook = checkWebhookConfiguration(t, cm, 15)
	if ca, _, _ := unstructured.NestedString(hook, "clientConfig", "caBundle"); ca != "" {
		t.Error("with cert-manager the chart sets a caBundle of its own")
	}
	mwc := find(t, cm, "MutatingWebhookConfiguration")
	if got := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "regnorm/regnorm-webhook" {
		t.Errorf("cert-manager.io/inject-ca-from %q, want regnorm/regnorm-webhook", got)
	}
	serving := named(t, cm, "Certificate", "regnorm-webhook")
	if name, _, _ := unstructured.NestedString(serving.Object, "spec", "secretName"); name != "regnorm-webhook-tls" {
		t.Errorf("the Certificate writes %q, not the Secret the pod mounts", name)
	}
	if dns, _, _ := unstructured.NestedStringSlice(serving.Object, "spec", "dnsNames"); !slices.Equal(dns, []string{"regnorm-webhook.regnorm.svc", "regnorm-webhook.regnorm"}) {
		t.Errorf("the Certificate names %v", dns)
	}
	issuer, _, _ := unstructured.NestedStringMap(serving.Object, "spec", "issuerRef")
	ca2 := named(t, cm, "Issuer", issuer["name"])
	if secret, _, _ := unstructured.NestedString(ca2.Object, "spec", "ca", "secretName"); secret != "regnorm-webhook-ca" {
		t.Errorf("the serving Certificate's issuer %v is not the chart's CA", issuer)
	}
	caCert := named(t, cm, "Certificate", "regnorm-webhook-ca")
	if isCA, _, _ := unstructured.NestedBool(caCert.Object, "spec", "isCA"); !isCA {
		t.Error("the CA Certificate is no CA")
	}
	selfRef, _, _ := unstructured.NestedStringMap(caCert.Object, "spec", "issuerRef")
	if self := named(t, cm, "Issuer", selfRef["name"]); self.Object["spec"].(map[string]any)["selfSigned"] == nil {
		t.Error("the CA is not self-signed")
	}
	for _, o := range cm {
		if o.GetKind() == "Secret" {
			t.Errorf("with cert-manager the chart makes Secret %s", o.GetName())
		}
	}
	own := render(t, chartCases["admission webhook with cert-manager and a ClusterIssuer"])
	issuer, _, _ = unstructured.NestedStringMap(named(t, own, "Certificate", "regnorm-webhook").Object, "spec", "issuerRef")
	if issuer["kind"] != "ClusterIssuer" || issuer["name"] != "internal-ca" {
		t.Errorf("issuerRef %v", issuer)
	}
	for _, o := range own {
		if o.GetKind() == "Issuer" {
			t.Errorf("with an issuerRef the chart makes Issuer %s", o.GetName())
		}
	}

	mine := render(t, chartCases["admission webhook with a certificate of one's own"])
	hook = checkWebhookConfiguration(t, mine, 15)
	if ca, _, _ := unstructured.NestedString(hook, "clientConfig", "caBundle"); ca != base64.StdEncoding.EncodeToString([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")) {
		t.Errorf("caBundle %q is not webhook.tls.caBundle", ca)
	}
	if s, _ := mountedSecret(t, find(t, mine, "Deployment"), "/etc/regnorm/webhook/tls.crt"); s != "regnorm-webhook-own" {
		t.Errorf("the pod mounts the webhook's pair from %q", s)
	}

	for values, want := range map[string]string{
		`{webhook: {enabled: true, timeoutSeconds: 31}}`:                                                   "webhook.timeoutSeconds must be from 1 to 30",
		`{webhook: {enabled: true, clients: ["2.1"], tls: {secretName: x}}}`:                               "webhook.tls.caBundle",
		`{webhook: {enabled: true, clients: ["2.1"], tls: {secretName: x}, certManager: {enabled: true}}}`: "choose one",
		`{webhook: {enabled: true}}`:                                                                       "webhook.clients: name the containerd versions of your nodes",
		`{webhook: {enabled: true, clients: []}}`:                                                          "webhook.clients: name the containerd versions of your nodes",
		`{webhook: {enabled: false}, config: {extra: {webhook: {listen: ":8443"}}}}`:                       "config.extra.webhook: the chart renders webhook itself",
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", values, err, want)
		}
	}
}

// checkWebhookConfiguration checks the MutatingWebhookConfiguration of objs
// against what docs/webhook.md and the e2e tests rely on, and returns its
// webhook.
func checkWebhookConfiguration(t *testing.T, objs []*unstructured.Unstructured, timeout int64) map[string]any {
	t.Helper()
	mwc := named(t, objs, "MutatingWebhookConfiguration", "regnorm-pinned-digests")
	hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
	if len(hooks) != 1 {
		t.Fatalf("%d webhooks", len(hooks))
	}
	hook := hooks[0].(map[string]any)
	for field, want := range map[string]any{
		"name": "pinned-digests.regnorm.dev", "failurePolicy": "Ignore", "sideEffects": "NoneOnDryRun",
		"reinvocationPolicy": "IfNeeded", "matchPolicy": "Equivalent", "timeoutSeconds": timeout,
	} {
		if got := hook[field]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("webhook %s = %v, want %v", field, got, want)
		}
	}
	if got := fmt.Sprint(hook["admissionReviewVersions"]); got != "[v1]" {
		t.Errorf("admissionReviewVersions %s", got)
	}
	svc, _, _ := unstructured.NestedMap(hook, "clientConfig", "service")
	if svc["name"] != "regnorm-webhook" || svc["namespace"] != "regnorm" || svc["path"] != "/mutate" || fmt.Sprint(svc["port"]) != "443" {
		t.Errorf("clientConfig.service %v", svc)
	}
	want := []string{"[] [v1] [CREATE] [pods] Namespaced", "[] [v1] [UPDATE] [pods/ephemeralcontainers] Namespaced"}
	var got []string
	rules, _, _ := unstructured.NestedSlice(hook, "rules")
	for _, r := range rules {
		r := r.(map[string]any)
		got = append(got, fmt.Sprint(r["apiGroups"], " ", r["apiVersions"], " ", r["operations"], " ", r["resources"], " ", r["scope"]))
	}
	if !slices.Equal(got, want) {
		t.Errorf("rules %q, want %q", got, want)
	}
	exprs, _, _ := unstructured.NestedSlice(hook, "namespaceSelector", "matchExpressions")
	var sel []string
	for _, e := range exprs {
		e := e.(map[string]any)
		sel = append(sel, fmt.Sprint(e["key"], " ", e["operator"], " ", e["values"]))
	}
	for _, want := range []string{"regnorm.dev/webhook NotIn [disabled]", "kubernetes.io/metadata.name NotIn [regnorm kube-system]"} {
		if !slices.Contains(sel, want) {
			t.Errorf("namespace selector %q lacks %q", sel, want)
		}
	}
	return hook
}

// verifyServing checks that the PEM certificate in crt (base64) is signed
// by the CA in ca (base64) for host.
func verifyServing(t *testing.T, ca, crt, host string) {
	t.Helper()
	decode := func(b64 string) *x509.Certificate {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(raw)
		if block == nil {
			t.Fatalf("not PEM: %q", raw)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	roots := x509.NewCertPool()
	roots.AddCert(decode(ca))
	if _, err := decode(crt).Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
		t.Errorf("the serving certificate does not verify for %s against the caBundle: %v", host, err)
	}
}

// TestChartWebhookKeepsItsCertificate: on an upgrade the generated pair is
// the one in the cluster (lookup), so the caBundle the API server holds
// keeps matching the pod's certificate; a first install makes a new one.
func TestChartWebhookKeepsItsCertificate(t *testing.T) {
	t.Parallel()
	values := `{webhook: {enabled: true, clients: ["1.6.8"]}}`
	first := render(t, values)
	secret := named(t, first, "Secret", "regnorm-webhook-tls")
	again := renderWithCluster(t, values, secret)
	kept := named(t, again, "Secret", "regnorm-webhook-tls")
	was, _, _ := unstructured.NestedStringMap(secret.Object, "data")
	is, _, _ := unstructured.NestedStringMap(kept.Object, "data")
	if was["tls.crt"] != is["tls.crt"] || was["tls.key"] != is["tls.key"] || was["ca.crt"] != is["ca.crt"] {
		t.Error("an upgrade made a new pair")
	}
	hooks, _, _ := unstructured.NestedSlice(named(t, again, "MutatingWebhookConfiguration", "regnorm-pinned-digests").Object, "webhooks")
	if ca, _, _ := unstructured.NestedString(hooks[0].(map[string]any), "clientConfig", "caBundle"); ca != was["ca.crt"] {
		t.Error("an upgrade's caBundle is not the kept CA")
	}
	fresh, _, _ := unstructured.NestedStringMap(named(t, render(t, values), "Secret", "regnorm-webhook-tls").Object, "data")
	if fresh["ca.crt"] == was["ca.crt"] {
		t.Error("two installs made the same CA")
	}
	// A pair made for another name (the main Service's, by an earlier
	// chart) would fail every call: it is made again, for the webhook's
	// Service.
	old := secret.DeepCopy()
	old.SetAnnotations(nil)
	remade := named(t, renderWithCluster(t, values, old), "Secret", "regnorm-webhook-tls")
	now, _, _ := unstructured.NestedStringMap(remade.Object, "data")
	if now["ca.crt"] == was["ca.crt"] {
		t.Error("an upgrade kept a pair not made for the webhook's Service")
	}
	verifyServing(t, now["ca.crt"], now["tls.crt"], "regnorm-webhook.regnorm.svc")
}

// renderWithCluster renders values as an upgrade, with objs in the
// cluster that lookup reads.
func renderWithCluster(t *testing.T, values string, objs ...*unstructured.Unstructured) []*unstructured.Unstructured {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(chrt, parseValues(t, values),
		chartutil.ReleaseOptions{Name: "regnorm", Namespace: "regnorm", IsUpgrade: true}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	var runtimeObjs []runtime.Object
	for _, o := range objs {
		o = o.DeepCopy()
		o.SetNamespace("regnorm")
		runtimeObjs = append(runtimeObjs, o)
	}
	client := dynamicfake.NewSimpleDynamicClient(runtime.NewScheme(), runtimeObjs...)
	files, err := engine.RenderWithClientProvider(chrt, vals, fakeProvider{client})
	if err != nil {
		t.Fatal(err)
	}
	return decodeRendered(t, files)
}

type fakeProvider struct{ client dynamic.Interface }

func (p fakeProvider) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return nil, false, err
	}
	return p.client.Resource(gv.WithResource(strings.ToLower(kind) + "s")), true, nil
}

// TestChartWebhookTimeoutWithinTheAPIServers: regnorm's own budget
// (webhook.timeout) must end before the API server stops waiting
// (webhook.timeoutSeconds), else a slow admission is cut off by the API
// server: failurePolicy Ignore admits the Pod as written, with no warning,
// and the pending result regnorm would have given is lost. The chart
// renders both, so it refuses values where the budget is not below the
// API server's wait (the README says "keep it above"; nothing checks it).
func TestChartWebhookTimeoutWithinTheAPIServers(t *testing.T) {
	t.Parallel()
	for _, values := range []string{
		`{webhook: {enabled: true, timeout: 20s}}`,                     // timeoutSeconds 15, the default
		`{webhook: {enabled: true, timeout: 10s, timeoutSeconds: 10}}`, // no room for the answer
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), "webhook.timeoutSeconds") {
			t.Errorf("%s: got %v, want an error naming webhook.timeoutSeconds", values, err)
		}
	}
}

// TestChartWebhookCallers: webhook.clientCA, in each of its forms, has
// regnorm require the API server's client certificate (clientCAFile, and
// clientNames), mounted whole from where the CA is; webhook.networkPolicy.from
// opens the webhook's port to those peers only. Without clientCA, regnorm
// is told of no CA; contradictory values fail with the value's name.
func TestChartWebhookCallers(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]struct {
		kind, source, key string
		names             string
	}{
		"admission webhook, the API server's client certificate, its control plane only": {"configMap", "regnorm-webhook-client-ca", "ca.crt", "\n  clientNames:\n    - \"kube-apiserver\"\n"},
		"admission webhook, kubeadm's CA in kube-root-ca.crt":                            {"configMap", "kube-root-ca.crt", "ca.crt", "\n  clientNames:\n    - \"kube-apiserver-kubelet-client\"\n"},
		"admission webhook, the client CA in a Secret":                                   {"secret", "apiserver-client-ca", "ca.pem", "\n  clientNames:\n    - \"kube-apiserver\"\n"},
	} {
		objs := render(t, chartCases[name])
		cfg := configMapData(t, objs, "regnorm", "regnorm.yaml")
		if !strings.Contains(cfg, "\n  clientCAFile: /etc/regnorm/webhook-client-ca/ca.crt\n") || !strings.Contains(cfg, want.names) {
			t.Errorf("%s: regnorm.yaml does not ask for the client certificate (want names %q):\n%s", name, want.names, cfg)
		}
		deploy := find(t, objs, "Deployment")
		vol := mountedVolume(t, deploy, "/etc/regnorm/webhook-client-ca")
		src, _ := vol[want.kind].(map[string]any)
		srcName := fmt.Sprint(src["name"])
		if want.kind == "secret" {
			srcName = fmt.Sprint(src["secretName"])
		}
		if srcName != want.source || fmt.Sprint(src["items"]) != fmt.Sprintf("[map[key:%s path:ca.crt]]", want.key) {
			t.Errorf("%s: the client CA is mounted from %v", name, vol)
		}
	}
	objs := render(t, chartCases["admission webhook, the API server's client certificate, its control plane only"])
	if got := configMapData(t, objs, "regnorm-webhook-client-ca", "ca.crt"); got != "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" {
		t.Errorf("the client CA's ConfigMap holds %q", got)
	}
	ingress, _, _ := unstructured.NestedSlice(find(t, objs, "NetworkPolicy").Object, "spec", "ingress")
	if !slices.ContainsFunc(ingress, func(r any) bool {
		r2 := r.(map[string]any)
		return strings.Contains(fmt.Sprint(r2["ports"]), "port:webhook") && fmt.Sprint(r2["from"]) == "[map[ipBlock:map[cidr:10.0.0.0/28]]]"
	}) {
		t.Errorf("the network policy does not open the webhook's port to webhook.networkPolicy.from only: %v", ingress)
	}
	if cfg := configMapData(t, render(t, `{webhook: {enabled: true, clients: ["2.1"]}}`), "regnorm", "regnorm.yaml"); strings.Contains(cfg, "clientCAFile") {
		t.Errorf("without webhook.clientCA regnorm is told of a client CA:\n%s", cfg)
	}
	for values, want := range map[string]string{
		`{webhook: {enabled: true, clients: ["2.1"], clientCA: {secretName: a, pem: b}}}`:                      "webhook.clientCA: set one of",
		`{webhook: {enabled: true, clients: ["2.1"], clientNames: [kube-apiserver]}}`:                          "webhook.clientNames needs webhook.clientCA",
		`{webhook: {enabled: true, clients: ["2.1"], networkPolicy: {from: [{ipBlock: {cidr: 10.0.0.0/8}}]}}}`: "webhook.networkPolicy.from needs networkPolicy.enabled",
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", values, err, want)
		}
	}
}

// mountedVolume is the volume workload mounts at dir.
func mountedVolume(t *testing.T, workload *unstructured.Unstructured, dir string) map[string]any {
	t.Helper()
	var volume any
	for _, m := range container(t, workload)["volumeMounts"].([]any) {
		if m := m.(map[string]any); m["mountPath"] == dir {
			volume = m["name"]
		}
	}
	vols, _, _ := unstructured.NestedSlice(workload.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		if v := v.(map[string]any); volume != nil && v["name"] == volume {
			return v
		}
	}
	t.Fatalf("%s %s mounts nothing at %s", workload.GetKind(), workload.GetName(), dir)
	return nil
}

// TestChartWebhookTimeoutForms: webhook.timeout is read in ms, s or m
// (as regnorm reads it), and a budget at least a second short of the API
// server's wait renders with both values as given; another form fails
// with the value's name.
func TestChartWebhookTimeoutForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		timeout string
		seconds int
	}{{"9s", 10}, {"1500ms", 3}, {"0.25m", 16}, {"24s", 30}} {
		values := fmt.Sprintf(`{webhook: {enabled: true, clients: ["2.1"], timeout: %s, timeoutSeconds: %d}}`, tc.timeout, tc.seconds)
		objs := render(t, values)
		checkWebhookConfiguration(t, objs, int64(tc.seconds))
		if cfg := configMapData(t, objs, "regnorm", "regnorm.yaml"); !strings.Contains(cfg, "\n  timeout: "+tc.timeout+"\n") {
			t.Errorf("%s: regnorm.yaml lacks timeout %s:\n%s", values, tc.timeout, cfg)
		}
	}
	for _, timeout := range []string{"1m30s", "ten", "0s", "26s"} {
		values := fmt.Sprintf(`{webhook: {enabled: true, clients: ["2.1"], timeout: %s, timeoutSeconds: 30}}`, timeout)
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), "webhook.timeout: ") {
			t.Errorf("%s: got %v, want an error naming webhook.timeout", values, err)
		}
	}
}

// TestChartPinnedSize: cache.maxPinnedSize reaches regnorm's cache
// settings (the rendered config passes --check-config in
// TestChartRendersValidObjects).
func TestChartPinnedSize(t *testing.T) {
	t.Parallel()
	cfg := configMapData(t, render(t, chartCases["admission webhook, kubeadm's CA in kube-root-ca.crt"]), "regnorm", "regnorm.yaml")
	if !strings.Contains(cfg, "\n  maxSize: \"40GiB\"\n  maxPinnedSize: \"10GiB\"\n") {
		t.Errorf("regnorm.yaml does not bound the pins:\n%s", cfg)
	}
}
