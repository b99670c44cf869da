package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

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
	"network policy": `
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
  s3: {bucket: regnorm-cache, region: eu-west-1, endpoint: "http://minio.storage:9000", forcePathStyle: true, existingSecret: regnorm-s3}`,
	"credentials in an existing secret, no persistence": `
upstreams:
  - {name: registry.example.com, url: https://registry.example.com, username: bot, passwordKey: token}
credentials: {existingSecret: my-registry-credentials}
cache: {persistence: {enabled: false}}
config: {defaultUpstream: registry.example.com}`,
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
				if obj.GetKind() == "ServiceMonitor" {
					// A custom resource: client-go has no schema for it. Its
					// fields are checked below instead.
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
			cfg := mountSecrets(t, configMapData(t, objs, "regnorm", "regnorm.yaml"))
			path := filepath.Join(t.TempDir(), "regnorm.yaml")
			os.WriteFile(path, []byte(cfg), 0o600)
			if out, err := exec.Command(regnorm, "--check-config", "--config", path).CombinedOutput(); err != nil {
				t.Errorf("regnorm rejects the rendered config: %v\n%s\n%s", err, out, cfg)
			}
		})
	}
}

// mountSecrets stands in for the pod's mounts: every file a rendered
// configuration names under /etc/regnorm is created, with a placeholder, in
// a temporary directory, and the configuration is pointed there.
func mountSecrets(t *testing.T, cfg string) string {
	t.Helper()
	root := t.TempDir()
	for _, ref := range regexp.MustCompile(`/etc/regnorm/[^\s"']+`).FindAllString(cfg, -1) {
		p := filepath.Join(root, ref)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("placeholder\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return strings.ReplaceAll(cfg, "/etc/regnorm/", root+"/etc/regnorm/")
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
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", values, err, want)
		}
	}

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
	for _, want := range []string{"driver: s3", "bucket: regnorm-cache", "endpoint: http://minio.storage:9000", "accessKeyFile: /etc/regnorm/s3/accessKey"} {
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
	return objs, nil
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
