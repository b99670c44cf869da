package deploy_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/regnorm/regnorm/internal/regtest"
)

const chartDir = "helm/regnorm"

// chartCases are the documented combinations of values.
var chartCases = map[string]string{
	"defaults": ``,
	"bounded filesystem cache": `
cache: {maxSize: 40GiB, persistence: {size: 50Gi}}`,
	"node configuration with a fixed ClusterIP": `
service: {clusterIP: 10.96.100.50}
nodeConfig: {enabled: true}`,
	"node configuration with a NodePort": `
service: {type: NodePort, nodePort: 30500}
nodeConfig: {enabled: true, configPath: /etc/containerd/certs.d}`,
	"monitoring": `
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
  dashboard: {enabled: true}`,
	"network policy, with node configuration": `
service: {clusterIP: 10.96.100.50}
nodeConfig: {enabled: true}
networkPolicy:
  enabled: true
  restrictEgress: true
  ingressFrom: [{ipBlock: {cidr: 10.0.0.0/8}}]`,
	"credentials in a chart secret": `
upstreams:
  - {name: docker.io, url: https://registry-1.docker.io, username: mybot, passwordKey: dockerhub}
credentials: {passwords: {dockerhub: s3cret}}`,
	"three replicas on S3": `
replicaCount: 3
cache:
  driver: s3
  maxAge: 720h
  evictionGrace: 3h
  maintenanceInterval: 2h
  s3: {bucket: regnorm-cache, region: eu-west-1, endpoint: "http://minio.storage:9000", forcePathStyle: true, existingSecret: regnorm-s3}`,
	"replicas sharing with a Secret of one's own, behind a network policy": `
replicaCount: 2
replicas: {port: 5101, clusterDomain: k8s.example, secret: {secretName: regnorm-replicas-own, key: hmac}}
cache: {driver: s3, s3: {bucket: regnorm-cache}}
networkPolicy: {enabled: true, restrictEgress: true}`,
	"credentials in an existing secret, no persistence": `
upstreams:
  - {name: registry.example.com, url: https://registry.example.com, username: bot, passwordKey: token}
credentials: {existingSecret: my-registry-credentials}
cache: {persistence: {enabled: false}}
config: {defaultUpstream: registry.example.com}`,
	"TLS, client authentication, protected endpoints, checked nodes, signed attestations": `
service: {clusterIP: 10.96.100.50}
tls: {secretName: regnorm-tls}
auth: {htpasswdSecret: regnorm-htpasswd, tokensSecret: regnorm-tokens, protectMetrics: true, protectReport: true}
attestations: {keySecret: regnorm-attestation-key}
metrics:
  serviceMonitor:
    enabled: true
    authorization: {type: Bearer, credentials: {name: regnorm-scrape, key: token}}
    tlsConfig: {ca: {secret: {name: regnorm-tls, key: ca.crt}}}
nodeConfig: {enabled: true, token: {secretName: regnorm-node-token}}`,
	"node reports with a token Secret of one's own, k3s paths": `
service: {clusterIP: 10.96.100.50}
nodeConfig:
  enabled: true
  configPath: /var/lib/rancher/k3s/agent/etc/containerd/certs.d
  containerdConfig: /var/lib/rancher/k3s/agent/etc/containerd/config.toml
  containerdSocket: /run/k3s/containerd/containerd.sock
  reportToken: {secretName: regnorm-report, key: report-token}`,
	"forwarded credentials and a private CA": `
upstreams:
  - {name: registry.example.com, url: https://registry.example.com, caKey: registry-ca.pem, forwardCredentials: true, allowRedirectsTo: [registry-auth.internal, 10.20.0.0/16]}
credentials: {existingSecret: registry-ca}`,
	"one upstream, nodes fixed, tuned downloads": `
upstreams:
  - {name: registry.example.com, url: https://registry.example.com, maxBlobSize: 4GiB, maxDownloads: 6}
service: {type: NodePort, nodePort: 30500}
config:
  maxDownloads: 8
  maxQueuedDownloads: 32
  spoolMaxSize: 2GiB
  maxBlobSize: 8GiB
  nodes: {forgetAfter: 2h}
  extra: {fetchTimeout: 30m, upstreamAttempts: 2}
nodeConfig:
  enabled: true
  fix: {enabled: true}
  containerdConfig: /etc/containerd/config.toml
  importDirs: [/etc/containerd-extra]
  reportTo: http://regnorm.regnorm.svc:5000`,
	"admission webhook, generated certificate, more of the namespace selector, behind a network policy": `
webhook:
  enabled: true
  clients: ["1.6.8", 2.1]
  timeoutSeconds: 20
  namespaceSelector:
    matchLabels: {team: apps}
    matchExpressions: [{key: tier, operator: NotIn, values: [system]}]
networkPolicy: {enabled: true, restrictEgress: true}`,
	"admission webhook, the API server's client certificate, its control plane only": `
webhook:
  enabled: true
  clients: ["1.6.8"]
  clientCA: {pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}
  clientNames: [kube-apiserver]
  networkPolicy: {from: [{ipBlock: {cidr: 10.0.0.0/28}}]}
networkPolicy: {enabled: true}`,
	"admission webhook, kubeadm's CA in kube-root-ca.crt": `
webhook: {enabled: true, clients: ["2.1"], clientCA: {configMapName: kube-root-ca.crt}, clientNames: [kube-apiserver-kubelet-client]}
cache: {maxSize: 40GiB, maxPinnedSize: 10GiB}`,
	"admission webhook, the client CA in a Secret": `
webhook: {enabled: true, clients: ["2.1"], clientCA: {secretName: apiserver-client-ca, key: ca.pem}, clientNames: [kube-apiserver]}`,
	"admission webhook with cert-manager": `
webhook: {enabled: true, clients: ["1.6.8"], certManager: {enabled: true}}`,
	"admission webhook with cert-manager and a ClusterIssuer": `
webhook: {enabled: true, clients: ["1.6.8"], certManager: {enabled: true, issuerRef: {kind: ClusterIssuer, name: internal-ca}}}`,
	"admission webhook with a certificate of one's own": `
webhook: {enabled: true, clients: ["1.6.8"], tls: {secretName: regnorm-webhook-own, caBundle: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}`,
}

func TestChartLints(t *testing.T) {
	t.Parallel()
	for name, values := range chartCases {
		vals := parseValues(t, values)
		linter := lint.All(chartDir, vals, "regnorm", false)
		for _, msg := range linter.Messages {
			if msg.Severity >= support.WarningSev {
				t.Errorf("%s: %s", name, msg)
			}
		}
	}
}

func TestChartRendersValidObjects(t *testing.T) {
	t.Parallel()
	tc := applyconfigurations.NewTypeConverter(scheme.Scheme)
	regnorm := buildRegnorm(t)
	for name, values := range chartCases {
		t.Run(name, func(t *testing.T) {
			objs := render(t, values)
			kinds := map[string]int{}
			for _, obj := range objs {
				kinds[obj.GetKind()]++
				if obj.GetKind() == "ServiceMonitor" || strings.HasPrefix(obj.GetAPIVersion(), "cert-manager.io/") {
					// Custom resources: client-go has no schema for them.
					// Their fields are checked in TestChartDetails and
					// TestChartWebhook instead.
					continue
				}
				if _, err := tc.ObjectToTyped(obj); err != nil {
					t.Errorf("%s %s does not match the Kubernetes API schema: %v", obj.GetKind(), obj.GetName(), err)
				}
			}
			for _, kind := range []string{"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} {
				if kinds[kind] == 0 {
					t.Errorf("no %s rendered", kind)
				}
			}
			// The rendered configuration is one the binary accepts, with
			// everything it refers to loaded: the files the pod mounts from
			// Secrets are made under a temporary root.
			secrets := newSecretFiles(t)
			raw := configMapData(t, objs, "regnorm", "regnorm.yaml")
			for _, ref := range secretRefs.FindAllString(raw, -1) {
				checkMounted(t, find(t, objs, "Deployment"), ref)
			}
			cfg := secrets.mount(t, raw)
			path := filepath.Join(t.TempDir(), "regnorm.yaml")
			os.WriteFile(path, []byte(cfg), 0o600)
			// With the environment the pod gives (REGNORM_REPLICAS_SELF).
			check := exec.Command(regnorm, "--check-config", "--config", path)
			check.Env = append(os.Environ(), podEnv(t, find(t, objs, "Deployment"), testPodIP)...)
			if out, err := check.CombinedOutput(); err != nil {
				t.Errorf("regnorm rejects the rendered config: %v\n%s\n%s", err, out, cfg)
			}
			if kinds["DaemonSet"] > 0 {
				ds := find(t, objs, "DaemonSet")
				checkNodeConfigArgs(t, regnorm, ds, secrets)
				checkNodeMounts(t, ds)
				checkSelectorsSpare(t, objs, ds)
				// Pods that are not ready mark nodes that do not use the
				// mirror: they must not stop the rollout to the others.
				if got, _, _ := unstructured.NestedString(ds.Object, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable"); got != "100%" {
					t.Errorf("node-config's DaemonSet rolls out with maxUnavailable %q, want 100%%", got)
				}
			}
		})
	}
}

// checkNodeConfigArgs runs the DaemonSet's node-config command once, with
// the node's paths under a temporary root: the binary must accept every
// argument the chart renders, name a hosts.toml per upstream (--once
// writes none), and check the (absent) containerd.
func checkNodeConfigArgs(t *testing.T, regnorm string, ds *unstructured.Unstructured, secrets *secretFiles) {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	c := containers[0].(map[string]any)
	var args []string
	for _, a := range c["args"].([]any) {
		flag, value, ok := strings.Cut(a.(string), "=")
		if secretRefs.MatchString(value) {
			checkMounted(t, ds, value)
		}
		if ok && strings.HasPrefix(value, "/") {
			a = flag + "=" + secrets.mount(t, value)
		}
		args = append(args, a.(string))
	}
	out, err := exec.Command(regnorm, slices.Insert(args, 1, "--once")...).CombinedOutput()
	if err != nil {
		t.Fatalf("node-config rejects the DaemonSet's arguments %q: %v\n%s", args, err, out)
	}
	if !strings.Contains(string(out), "/hosts.toml") || !strings.Contains(string(out), `"readsHostsToml": false`) {
		t.Errorf("node-config --once: %s", out)
	}
	// The readiness probe reads the status file node-config writes.
	probe, _, _ := unstructured.NestedStringSlice(c, "readinessProbe", "exec", "command")
	if !slices.Contains(c["args"].([]any), any(strings.Join(probe[len(probe)-1:], ""))) ||
		!slices.Equal(probe[:3], []string{"/regnorm", "node-config", "probe"}) || !strings.HasPrefix(probe[3], "--status-file=") {
		t.Errorf("readiness probe %q does not run node-config probe on the status file of %q", probe, c["args"])
	}
}

// checkNodeMounts: every node path node-config is given is on a hostPath
// volume mounted at the same path, writable exactly where node-config
// writes (config_path, and the drop-in directory with --fix).
func checkNodeMounts(t *testing.T, ds *unstructured.Unstructured) {
	t.Helper()
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	c := spec["containers"].([]any)[0].(map[string]any)
	hostPaths := map[string]string{} // volume -> host path
	for _, v := range spec["volumes"].([]any) {
		v := v.(map[string]any)
		if hp, ok := v["hostPath"].(map[string]any); ok {
			hostPaths[v["name"].(string)] = hp["path"].(string)
		}
	}
	readOnly := map[string]bool{} // mount path of each host path -> read-only
	for _, m := range c["volumeMounts"].([]any) {
		m := m.(map[string]any)
		if host, ok := hostPaths[m["name"].(string)]; ok {
			if host != m["mountPath"] {
				t.Errorf("host path %s is mounted at %s: node-config would report paths containerd does not have", host, m["mountPath"])
			}
			readOnly[m["mountPath"].(string)] = m["readOnly"] == true
		}
	}
	// mountOf is the deepest host mount holding p.
	mountOf := func(p string) (string, bool, bool) {
		if !filepath.IsAbs(p) {
			return "", false, false
		}
		for d := filepath.Clean(p); ; d = filepath.Dir(d) {
			if ro, ok := readOnly[d]; ok {
				return d, ro, true
			}
			if d == "/" {
				return "", false, false
			}
		}
	}
	args := map[string]string{}
	for _, a := range c["args"].([]any) {
		if k, v, ok := strings.Cut(a.(string), "="); ok {
			args[k] = v
		}
	}
	for flag, writes := range map[string]bool{"--config-path": true, "--containerd-config": false, "--containerd-socket": false} {
		p := args[flag]
		at, ro, ok := mountOf(p)
		switch {
		case !ok:
			t.Errorf("%s=%s is on no hostPath mount", flag, p)
		case writes && ro:
			t.Errorf("%s=%s is on a read-only mount (%s)", flag, p, at)
		case !writes && !ro:
			t.Errorf("%s=%s is on a writable mount (%s): node-config only reads there", flag, p, at)
		}
	}
	writable := 0
	for _, ro := range readOnly {
		if !ro {
			writable++
		}
	}
	want := 1 // config_path
	if slices.Contains(c["args"].([]any), any("--fix")) {
		want = 2 // and the drop-in directory
	}
	if writable != want {
		t.Errorf("%d writable host mounts, want %d", writable, want)
	}
}

// checkSelectorsSpare: no selector of the server's (Service, Deployment,
// PodDisruptionBudget, NetworkPolicy) picks node-config's pods, and the
// Service picks the server's.
func checkSelectorsSpare(t *testing.T, objs []*unstructured.Unstructured, ds *unstructured.Unstructured) {
	t.Helper()
	dsLabels, _, _ := unstructured.NestedStringMap(ds.Object, "spec", "template", "metadata", "labels")
	depLabels, _, _ := unstructured.NestedStringMap(find(t, objs, "Deployment").Object, "spec", "template", "metadata", "labels")
	// An empty selector selects every pod (a NetworkPolicy's podSelector).
	matches := func(selector, labels map[string]string) bool {
		for k, v := range selector {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	for _, o := range objs {
		var sel map[string]string
		switch o.GetKind() {
		case "Service":
			sel, _, _ = unstructured.NestedStringMap(o.Object, "spec", "selector")
			if !matches(sel, depLabels) {
				t.Errorf("the Service does not select the Deployment's pods")
			}
		case "Deployment", "PodDisruptionBudget":
			sel, _, _ = unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
		case "NetworkPolicy":
			sel, _, _ = unstructured.NestedStringMap(o.Object, "spec", "podSelector", "matchLabels")
		default:
			continue
		}
		if matches(sel, dsLabels) {
			t.Errorf("%s %s selects node-config's pods (%v)", o.GetKind(), o.GetName(), sel)
		}
	}
}

// secretRefs matches the files a pod reads from its Secrets.
var secretRefs = regexp.MustCompile(`/etc/regnorm(-node)?/[^\s"']+`)

// checkMounted: the workload mounts a volume at file's directory that
// holds file: a Secret (or ConfigMap) whose items (if listed) include its name.
func checkMounted(t *testing.T, workload *unstructured.Unstructured, file string) {
	t.Helper()
	spec, _, _ := unstructured.NestedMap(workload.Object, "spec", "template", "spec")
	var volume string
	for _, m := range spec["containers"].([]any)[0].(map[string]any)["volumeMounts"].([]any) {
		if m := m.(map[string]any); m["mountPath"] == filepath.Dir(file) {
			volume = m["name"].(string)
		}
	}
	for _, v := range spec["volumes"].([]any) {
		v := v.(map[string]any)
		if v["name"] != volume {
			continue
		}
		source, ok := v["secret"].(map[string]any)
		if !ok {
			// A ConfigMap: a CA, which is no secret.
			if source, ok = v["configMap"].(map[string]any); !ok {
				break
			}
		}
		items, listed := source["items"].([]any)
		if !listed || slices.ContainsFunc(items, func(i any) bool { return i.(map[string]any)["path"] == filepath.Base(file) }) {
			return
		}
	}
	t.Errorf("%s %s reads %s, but mounts no Secret holding it there", workload.GetKind(), workload.GetName(), file)
}

// secretFiles stands in for the pod's mounts: every file a rendered
// configuration or command line names under /etc/regnorm (regnorm's own)
// or /etc/regnorm-node (node-config's) is created in a temporary root, with
// content of its kind: a real certificate and key, a bcrypt htpasswd line,
// a token, a CA bundle. Other absolute paths (the node's) move under the
// root, empty.
type secretFiles struct {
	root      string
	cert, key []byte
}

func newSecretFiles(t *testing.T) *secretFiles {
	t.Helper()
	cert, key := regtest.SelfSigned(t, "regnorm.regnorm.svc", "regnorm.regnorm.svc")
	return &secretFiles{root: t.TempDir(), cert: cert, key: key}
}

// mount creates the files s names and returns s pointing at them.
func (f *secretFiles) mount(t *testing.T, s string) string {
	t.Helper()
	for _, ref := range secretRefs.FindAllString(s, -1) {
		p := filepath.Join(f.root, ref)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.content(t, ref), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s = strings.ReplaceAll(s, "/etc/regnorm", f.root+"/etc/regnorm")
	if strings.HasPrefix(s, "/") && !strings.HasPrefix(s, f.root) {
		s = filepath.Join(f.root, s) // a node path in node-config's arguments
	}
	return s
}

func (f *secretFiles) content(t *testing.T, ref string) []byte {
	t.Helper()
	switch base := filepath.Base(ref); {
	case base == "tls.crt" || base == "ca.crt" || strings.Contains(base, "ca"):
		return f.cert
	case base == "tls.key":
		return f.key
	case base == "htpasswd":
		hash, err := bcrypt.GenerateFromPassword([]byte("pass"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return []byte("node:" + string(hash) + "\n")
	case base == "key.pem": // the attestation key
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	case filepath.Base(filepath.Dir(ref)) == "replicas": // the replicas' shared secret, at least 32 bytes
		return []byte(strings.Repeat("replica-secret-", 4) + "\n")
	default: // tokens, token, passwords
		return []byte("placeholder-secret\n")
	}
}

// TestSchemaValidationCatchesMistakes: the typed converter really rejects
// unknown fields and wrong types, so a pass above means something.
func TestSchemaValidationCatchesMistakes(t *testing.T) {
	t.Parallel()
	tc := applyconfigurations.NewTypeConverter(scheme.Scheme)
	for name, mutate := range map[string]func(*unstructured.Unstructured){
		"unknown field": func(o *unstructured.Unstructured) { unstructured.SetNestedField(o.Object, true, "spec", "replicasx") },
		"wrong type":    func(o *unstructured.Unstructured) { unstructured.SetNestedField(o.Object, "two", "spec", "replicas") },
	} {
		dep := find(t, render(t, chartCases["defaults"]), "Deployment")
		mutate(dep)
		if _, err := tc.ObjectToTyped(dep); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestChartDetails(t *testing.T) {
	t.Parallel()
	objs := render(t, chartCases["defaults"])
	dep := find(t, objs, "Deployment")
	spec, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
	container := spec["containers"].([]any)[0].(map[string]any)
	sc := container["securityContext"].(map[string]any)
	if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
		t.Errorf("container security context: %v", sc)
	}
	if psc := spec["securityContext"].(map[string]any); psc["runAsNonRoot"] != true {
		t.Errorf("pod security context: %v", psc)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if container[probe] == nil {
			t.Errorf("no %s", probe)
		}
	}
	if find(t, objs, "PersistentVolumeClaim") == nil {
		t.Error("no PVC for the filesystem cache")
	}

	nodes := render(t, chartCases["node configuration with a fixed ClusterIP"])
	ds := find(t, nodes, "DaemonSet")
	args, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	got := fmt.Sprint(args[0].(map[string]any)["args"])
	for _, want := range []string{"node-config", "--mirror=http://10.96.100.50:5000", "docker.io=https://registry-1.docker.io", "quay.io=https://quay.io"} {
		if !strings.Contains(got, want) {
			t.Errorf("node-config args %s lack %s", got, want)
		}
	}
	for values, want := range map[string]string{
		`nodeConfig: {enabled: true}`: "nodeConfig needs an address",
		`replicaCount: 2`:             "the filesystem cache is one ReadWriteOnce volume",
		`{cache: {driver: s3}}`:       "cache.s3.bucket is required",
		`{cache: {driver: nfs}}`:      "cache.driver must be filesystem or s3",
		`{service: {clusterIP: 10.96.0.9}, auth: {tokensSecret: t}, nodeConfig: {enabled: true}}`:                           "set auth.tokensSecret and nodeConfig.token.secretName",
		`{service: {clusterIP: 10.96.0.9}, auth: {htpasswdSecret: h}, nodeConfig: {enabled: true, token: {secretName: n}}}`: "set auth.tokensSecret and nodeConfig.token.secretName",
		`{auth: {tokensSecret: t}, upstreams: [{name: a.io, url: "https://a.io", forwardCredentials: true}]}`:               "auth cannot be on too",
		`{auth: {tokensSecret: t, protectMetrics: true}, metrics: {serviceMonitor: {enabled: true}}}`:                       "set metrics.serviceMonitor.authorization",
		`{auth: {protectReport: true}}`:  "need auth.htpasswdSecret or auth.tokensSecret",
		`{config: {extra: {cache: {}}}}`: "config.extra.cache: the chart renders cache itself",
		`{service: {clusterIP: 10.96.0.9}, nodeConfig: {enabled: true, configPath: "/etc/containerd/certs.d:/etc/docker/certs.d"}}`: "must be one directory",
		`{service: {clusterIP: 10.96.0.9}, nodeConfig: {enabled: true, fix: {enabled: true, dropInDir: /etc/containerd.d}}}`:        "must be under the directory of nodeConfig.containerdConfig",
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", values, err, want)
		}
	}

	secure := render(t, chartCases["TLS, client authentication, protected endpoints, checked nodes, signed attestations"])
	secureDep := find(t, secure, "Deployment")
	containers, _, _ := unstructured.NestedSlice(secureDep.Object, "spec", "template", "spec", "containers")
	if scheme, _, _ := unstructured.NestedString(containers[0].(map[string]any), "readinessProbe", "httpGet", "scheme"); scheme != "HTTPS" {
		t.Errorf("readiness probe scheme %q with TLS", scheme)
	}
	nc, _, _ := unstructured.NestedSlice(find(t, secure, "DaemonSet").Object, "spec", "template", "spec", "containers")
	for _, want := range []string{"--mirror=https://10.96.100.50:5000", "--report-to=https://regnorm.regnorm.svc:5000", "--mirror-token-file=", "--mirror-ca-file="} {
		if !strings.Contains(fmt.Sprint(nc[0].(map[string]any)["args"]), want) {
			t.Errorf("node-config args %v lack %s", nc[0].(map[string]any)["args"], want)
		}
	}

	checkReportToken(t)

	s3 := render(t, chartCases["three replicas on S3"])
	for _, o := range s3 {
		if o.GetKind() == "PersistentVolumeClaim" {
			t.Error("a PVC rendered with the S3 cache")
		}
	}
	s3dep := find(t, s3, "Deployment")
	if r, _, _ := unstructured.NestedFieldNoCopy(s3dep.Object, "spec", "replicas"); fmt.Sprint(r) != "3" {
		t.Errorf("replicas %v", r)
	}
	if st, _, _ := unstructured.NestedString(s3dep.Object, "spec", "strategy", "type"); st != "RollingUpdate" {
		t.Errorf("strategy %s with S3", st)
	}
	s3cfg := configMapData(t, s3, "regnorm", "regnorm.yaml")
	for _, want := range []string{"driver: s3", "bucket: regnorm-cache", "endpoint: http://minio.storage:9000", "accessKeyFile: /etc/regnorm/s3/accessKey",
		"evictionGrace: 3h", "maintenanceInterval: 2h"} {
		if !strings.Contains(s3cfg, want) {
			t.Errorf("S3 config lacks %q:\n%s", want, s3cfg)
		}
	}

	mon := render(t, chartCases["monitoring"])
	sm := find(t, mon, "ServiceMonitor")
	endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if ep := endpoints[0].(map[string]any); ep["port"] != "http" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v", ep)
	}
	dashboard := configMapData(t, mon, "regnorm-dashboard", "regnorm-dashboard.json")
	want, _ := os.ReadFile(dashboardPath)
	if strings.TrimSpace(dashboard) != strings.TrimSpace(string(want)) {
		t.Error("the chart's dashboard differs from deploy/grafana/regnorm-dashboard.json: copy it into deploy/helm/regnorm/files/")
	}
}

// checkReportToken: node-config's reports carry a token only regnorm and
// node-config hold: the chart makes a random one (or takes the operator's
// Secret) and mounts the same Secret and key in both; regnorm's
// nodes.hostsDir is node-config's configPath, and its
// nodes.containerdConfigDir the directory of node-config's
// containerdConfig. Without reports, neither holds a token.
func checkReportToken(t *testing.T) {
	t.Helper()
	// The Secret and key each workload mounts the file it is given from.
	mounted := func(workload *unstructured.Unstructured, file string) (secret, key string) {
		spec, _, _ := unstructured.NestedMap(workload.Object, "spec", "template", "spec")
		var volume string
		for _, m := range spec["containers"].([]any)[0].(map[string]any)["volumeMounts"].([]any) {
			if m := m.(map[string]any); m["mountPath"] == filepath.Dir(file) {
				volume = m["name"].(string)
			}
		}
		for _, v := range spec["volumes"].([]any) {
			v := v.(map[string]any)
			if s, ok := v["secret"].(map[string]any); ok && v["name"] == volume {
				for _, i := range s["items"].([]any) {
					if i := i.(map[string]any); i["path"] == filepath.Base(file) {
						return s["secretName"].(string), i["key"].(string)
					}
				}
			}
		}
		t.Fatalf("%s %s mounts no Secret at %s", workload.GetKind(), workload.GetName(), file)
		return "", ""
	}
	for name, want := range map[string]struct{ secret, key, hostsDir string }{
		"node configuration with a fixed ClusterIP":                {"regnorm-node-report", "token", "/etc/containerd/certs.d"},
		"node reports with a token Secret of one's own, k3s paths": {"regnorm-report", "report-token", "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"},
	} {
		objs := render(t, chartCases[name])
		cfg := configMapData(t, objs, "regnorm", "regnorm.yaml")
		file := regexp.MustCompile(`reportTokenFile: (\S+)`).FindStringSubmatch(cfg)
		configDir := filepath.Dir(want.hostsDir) // certs.d is in containerd's configuration directory in both
		if file == nil || !strings.Contains(cfg, "hostsDir: "+want.hostsDir+"\n") || !strings.Contains(cfg, "containerdConfigDir: "+configDir+"\n") {
			t.Errorf("%s: regnorm's configuration lacks reportTokenFile, or hostsDir %s, or containerdConfigDir %s:\n%s", name, want.hostsDir, configDir, cfg)
			continue
		}
		var reportArg string
		containers, _, _ := unstructured.NestedSlice(find(t, objs, "DaemonSet").Object, "spec", "template", "spec", "containers")
		for _, a := range containers[0].(map[string]any)["args"].([]any) {
			if v, ok := strings.CutPrefix(a.(string), "--report-token-file="); ok {
				reportArg = v
			}
		}
		if reportArg == "" {
			t.Errorf("%s: node-config has no --report-token-file", name)
			continue
		}
		for _, got := range [][2]string{
			func() [2]string { s, k := mounted(find(t, objs, "Deployment"), file[1]); return [2]string{s, k} }(),
			func() [2]string { s, k := mounted(find(t, objs, "DaemonSet"), reportArg); return [2]string{s, k} }(),
		} {
			if got != [2]string{want.secret, want.key} {
				t.Errorf("%s: a workload mounts the report token from %v, want %s key %s", name, got, want.secret, want.key)
			}
		}
		made, tok := false, ""
		for _, o := range objs {
			if o.GetKind() == "Secret" && o.GetName() == "regnorm-node-report" {
				made = true
				tok, _, _ = unstructured.NestedString(o.Object, "data", "token")
			}
		}
		switch {
		case want.secret != "regnorm-node-report" && made:
			t.Errorf("%s: the chart made a token Secret besides the operator's", name)
		case want.secret == "regnorm-node-report" && len(tok) < 64: // 48 random characters, base64
			t.Errorf("%s: the chart made no random token (%q)", name, tok)
		}
	}
	objs := render(t, `{service: {clusterIP: 10.96.100.50}, nodeConfig: {enabled: true, report: false}}`)
	for _, o := range objs {
		if o.GetKind() == "Secret" {
			t.Errorf("without reports, the chart makes Secret %s", o.GetName())
		}
	}
	if cfg := configMapData(t, objs, "regnorm", "regnorm.yaml"); strings.Contains(cfg, "reportTokenFile") {
		t.Errorf("without reports, regnorm takes them:\n%s", cfg)
	}
}

// TestChartReadmeDocumentsEveryValue keeps the chart's README in step with
// values.yaml: every value path must appear in its table.
func TestChartReadmeDocumentsEveryValue(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(raw, &vals); err != nil {
		t.Fatal(err)
	}
	var paths []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if !ok || len(m) == 0 {
			paths = append(paths, prefix)
			return
		}
		for k, child := range m {
			walk(strings.TrimPrefix(prefix+"."+k, "."), child)
		}
	}
	walk("", vals)
	sort.Strings(paths)
	// A pass-through Kubernetes object (resources, securityContext, a label
	// map) is documented as a whole: an enclosing key in the table counts.
	documented := func(p string) bool {
		for ; p != ""; p, _ = cutLast(p) {
			if bytes.Contains(readme, []byte("`"+p+"`")) {
				return true
			}
		}
		return false
	}
	for _, p := range paths {
		if !documented(p) {
			t.Errorf("README.md does not document %s", p)
		}
	}
}

// cutLast drops the last element of a dotted path.
func cutLast(p string) (string, bool) {
	i := strings.LastIndex(p, ".")
	if i < 0 {
		return "", false
	}
	return p[:i], true
}

func parseValues(t *testing.T, values string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(values), &vals); err != nil {
		t.Fatal(err)
	}
	return vals
}

func render(t *testing.T, values string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := renderErr(t, values)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func renderErr(t *testing.T, values string) ([]*unstructured.Unstructured, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(chrt, parseValues(t, values),
		chartutil.ReleaseOptions{Name: "regnorm", Namespace: "regnorm", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return nil, err
	}
	return decodeRendered(t, files), nil
}

// decodeRendered is the objects of the rendered files.
func decodeRendered(t *testing.T, files map[string]string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for name, content := range files {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		dec := yamlutil.NewYAMLOrJSONDecoder(strings.NewReader(content), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", name, err)
			}
			if len(obj.Object) > 0 {
				objs = append(objs, obj)
			}
		}
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	t.Fatalf("no %s rendered", kind)
	return nil
}

func configMapData(t *testing.T, objs []*unstructured.Unstructured, name, key string) string {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetName() == name {
			v, _, _ := unstructured.NestedString(o.Object, "data", key)
			return v
		}
	}
	t.Fatalf("no ConfigMap %s", name)
	return ""
}

// buildRegnorm builds the binary once for the config checks.
func buildRegnorm(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "regnorm")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/proxy").CombinedOutput(); err != nil {
		t.Fatalf("build regnorm: %v\n%s", err, out)
	}
	return bin
}
