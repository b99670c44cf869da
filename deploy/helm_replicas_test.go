package deploy_test

import (
	"encoding/base64"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/regnorm/regnorm/proxy/replicas"
)

// testPodIP is the pod's IP the tests give the kubelet's downward API.
const testPodIP = "10.244.1.7"

// TestChartReplicas: with several replicas on S3 (or replicas.share), the
// chart makes the replicas find and trust each other: a headless Service
// of the ready pods on the internal port, a shared secret (made once, or
// the operator's) mounted where the configuration reads it, the
// configuration's replicas.listen, .service and .secretFile, each pod's own
// URL from its IP, and the port on the container and in the network
// policy. With one replica, or the filesystem cache, or share false, none
// of it.
func TestChartReplicas(t *testing.T) {
	t.Parallel()
	s3 := `cache: {driver: s3, s3: {bucket: regnorm-cache}}`
	for name, values := range map[string]string{
		"defaults":                    chartCases["defaults"],
		"one replica on S3":           s3,
		"three replicas, share off":   "replicaCount: 3\nreplicas: {share: false}\n" + s3,
		"network policy, one replica": chartCases["network policy, with node configuration"],
	} {
		t.Run("none: "+name, func(t *testing.T) {
			t.Parallel()
			objs := render(t, values)
			for _, o := range objs {
				if strings.Contains(o.GetName(), "replicas") {
					t.Errorf("%s %s rendered", o.GetKind(), o.GetName())
				}
			}
			c := container(t, find(t, objs, "Deployment"))
			if env, ok := c["env"]; ok {
				t.Errorf("the container has an environment: %v", env)
			}
			if ports := c["ports"].([]any); len(ports) != 1 {
				t.Errorf("the container exposes %v, want the http port alone", ports)
			}
			if cfg := configMapData(t, objs, "regnorm", "regnorm.yaml"); strings.Contains(cfg, "replicas:") {
				t.Errorf("the configuration sets replicas:\n%s", cfg)
			}
			for _, o := range objs {
				if o.GetKind() == "NetworkPolicy" && strings.Contains(fmt.Sprint(o.Object["spec"]), "5001") {
					t.Errorf("the network policy opens the replicas' port: %v", o.Object["spec"])
				}
			}
		})
	}

	for name, want := range map[string]struct {
		values      string
		port        int64
		service     string
		secret, key string // the Secret and key mounted; "regnorm-replicas" is the chart's
		policy      bool
	}{
		"three replicas on S3": {chartCases["three replicas on S3"], 5001,
			"regnorm-replicas.regnorm.svc.cluster.local:5001", "regnorm-replicas", "secret", false},
		"replicas sharing with a Secret of one's own, behind a network policy": {chartCases["replicas sharing with a Secret of one's own, behind a network policy"], 5101,
			"regnorm-replicas.regnorm.svc.k8s.example:5101", "regnorm-replicas-own", "hmac", true},
		"one replica, share on (an autoscaler sets the replicas)": {"replicas: {share: true}\n" + s3, 5001,
			"regnorm-replicas.regnorm.svc.cluster.local:5001", "regnorm-replicas", "secret", false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			objs := render(t, want.values)
			dep := find(t, objs, "Deployment")
			podLabels, _, _ := unstructured.NestedStringMap(dep.Object, "spec", "template", "metadata", "labels")

			// The headless Service: the ready regnorm pods, on the port.
			svc := named(t, objs, "Service", "regnorm-replicas")
			spec := svc.Object["spec"].(map[string]any)
			if spec["clusterIP"] != "None" || spec["publishNotReadyAddresses"] != false {
				t.Errorf("Service regnorm-replicas is not headless of the ready pods only: clusterIP %v, publishNotReadyAddresses %v",
					spec["clusterIP"], spec["publishNotReadyAddresses"])
			}
			sel, _, _ := unstructured.NestedStringMap(spec, "selector")
			if len(sel) == 0 || !subset(sel, podLabels) {
				t.Errorf("Service regnorm-replicas selects %v, not the pods %v", sel, podLabels)
			}
			ports := spec["ports"].([]any)
			if len(ports) != 1 || fmt.Sprint(ports[0].(map[string]any)["port"]) != fmt.Sprint(want.port) || ports[0].(map[string]any)["targetPort"] != "replicas" {
				t.Errorf("Service regnorm-replicas ports %v, want %d to the container's port replicas", ports, want.port)
			}

			// The container: the port, named as the Service targets it.
			c := container(t, dep)
			if !slices.ContainsFunc(c["ports"].([]any), func(p any) bool {
				p2 := p.(map[string]any)
				return p2["name"] == "replicas" && fmt.Sprint(p2["containerPort"]) == fmt.Sprint(want.port)
			}) {
				t.Errorf("the container exposes %v, without replicas: %d", c["ports"], want.port)
			}

			// The configuration: listen on the port, members from the
			// Service's name, the secret from its mount.
			var cfg struct {
				Replicas struct{ Listen, Service, Self, SecretFile string }
			}
			raw := configMapData(t, objs, "regnorm", "regnorm.yaml")
			if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
				t.Fatal(err)
			}
			r := cfg.Replicas
			if r.Listen != fmt.Sprintf(":%d", want.port) || r.Service != want.service || r.SecretFile != "/etc/regnorm/replicas/secret" || r.Self != "" {
				t.Errorf("replicas configuration %+v, want listen :%d, service %s, secretFile /etc/regnorm/replicas/secret, no self (each pod's own)", r, want.port, want.service)
			}
			if secret, key := mountedSecret(t, dep, r.SecretFile); secret != want.secret || key != want.key {
				t.Errorf("the replicas' secret is mounted from Secret %s key %s, want %s key %s", secret, key, want.secret, want.key)
			}

			// Each pod's own URL, as the others find it through the
			// Service: its IP on the port.
			env := podEnv(t, dep, testPodIP)
			self := fmt.Sprintf("http://%s:%d", testPodIP, want.port)
			if !slices.Contains(env, "REGNORM_REPLICAS_SELF="+self) {
				t.Errorf("the container's environment %v lacks REGNORM_REPLICAS_SELF=%s", env, self)
			}
			// regnorm takes them (replicas.New checks what --check-config
			// does not: the URL's and the service's form).
			if _, err := replicas.New(replicas.Options{Self: self, Service: r.Service, Secret: []byte(strings.Repeat("s", replicas.MinSecretLength)),
				Clock: wallClock{}}); err != nil {
				t.Errorf("regnorm refuses the replicas' settings: %v", err)
			}

			// The secret the chart makes: random, long enough; none when the
			// operator names one.
			var made []string
			for _, o := range objs {
				if o.GetKind() == "Secret" && o.GetName() == "regnorm-replicas" {
					v, _, _ := unstructured.NestedString(o.Object, "data", "secret")
					b, err := base64.StdEncoding.DecodeString(v)
					if err != nil || len(b) < 48 {
						t.Errorf("the replicas' Secret holds %d bytes (%v), want 48 random ones", len(b), err)
					}
					made = append(made, o.GetName())
				}
			}
			if chartMade := want.secret == "regnorm-replicas"; chartMade != (len(made) == 1) {
				t.Errorf("the chart made the replicas' Secrets %v; want it to make one: %v", made, chartMade)
			}

			// The network policy: the port, from and to the regnorm pods only.
			for _, o := range objs {
				if o.GetKind() != "NetworkPolicy" {
					continue
				}
				if !want.policy {
					t.Fatal("a NetworkPolicy rendered without networkPolicy.enabled")
				}
				for _, dir := range []struct{ rules, peers, port string }{{"ingress", "from", "replicas"}, {"egress", "to", fmt.Sprint(want.port)}} {
					rules, _, _ := unstructured.NestedSlice(o.Object, "spec", dir.rules)
					var opened []any
					for _, rule := range rules {
						rule := rule.(map[string]any)
						for _, p := range rule["ports"].([]any) {
							if fmt.Sprint(p.(map[string]any)["port"]) == dir.port {
								opened = append(opened, rule[dir.peers])
							}
						}
					}
					if len(opened) != 1 || !onlyPods(opened[0], podLabels) {
						t.Errorf("%s to the replicas' port %s is open to %v, want the regnorm pods alone", dir.rules, dir.port, opened)
					}
				}
			}
		})
	}

	for values, want := range map[string]string{
		`{replicas: {share: true}}`:              "replicas share the work of one S3 cache",
		`{replicas: {share: "yes"}, ` + s3 + `}`: "replicas.share must be true, false or empty",
		`{config: {extra: {replicas: {}}}}`:      "config.extra.replicas: the chart renders replicas itself",
	} {
		if _, err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", values, err, want)
		}
	}
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// onlyPods: a NetworkPolicy rule's peers are exactly the pods with labels.
func onlyPods(peers any, labels map[string]string) bool {
	list, ok := peers.([]any)
	if !ok || len(list) != 1 {
		return false
	}
	peer := list[0].(map[string]any)
	if len(peer) != 1 {
		return false // a namespaceSelector or ipBlock besides
	}
	sel, _, _ := unstructured.NestedStringMap(peer, "podSelector", "matchLabels")
	return len(sel) > 0 && subset(sel, labels)
}

func subset(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func named(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func container(t *testing.T, workload *unstructured.Unstructured) map[string]any {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(workload.Object, "spec", "template", "spec", "containers")
	if len(containers) == 0 {
		t.Fatalf("%s %s has no container", workload.GetKind(), workload.GetName())
	}
	return containers[0].(map[string]any)
}

// mountedSecret is the Secret and key workload mounts file from.
func mountedSecret(t *testing.T, workload *unstructured.Unstructured, file string) (secret, key string) {
	t.Helper()
	var volume string
	for _, m := range container(t, workload)["volumeMounts"].([]any) {
		if m := m.(map[string]any); m["mountPath"] == path.Dir(file) {
			volume = m["name"].(string)
		}
	}
	vols, _, _ := unstructured.NestedSlice(workload.Object, "spec", "template", "spec", "volumes")
	for _, v := range vols {
		v := v.(map[string]any)
		s, ok := v["secret"].(map[string]any)
		if !ok || v["name"] != volume {
			continue
		}
		items, _ := s["items"].([]any)
		for _, i := range items {
			if i := i.(map[string]any); i["path"] == path.Base(file) {
				return s["secretName"].(string), i["key"].(string)
			}
		}
	}
	t.Fatalf("%s %s mounts no Secret item at %s", workload.GetKind(), workload.GetName(), file)
	return "", ""
}

// envRef is a $(VAR) reference in a container's environment.
var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// podEnv is the regnorm container's environment as the kubelet makes it
// for a pod whose IP is podIP: values, the downward API's status.podIP,
// and $(VAR) references to the variables before. Any other source fails
// the test: it would need a stand-in here.
func podEnv(t *testing.T, dep *unstructured.Unstructured, podIP string) []string {
	t.Helper()
	list, _ := container(t, dep)["env"].([]any)
	vars := map[string]string{}
	var env []string
	for _, e := range list {
		e := e.(map[string]any)
		name := e["name"].(string)
		var v string
		switch {
		case e["valueFrom"] != nil:
			field, _, _ := unstructured.NestedString(e, "valueFrom", "fieldRef", "fieldPath")
			if field != "status.podIP" {
				t.Fatalf("env %s comes from %v, which the test cannot stand in for", name, e["valueFrom"])
			}
			v = podIP
		default:
			v, _ = e["value"].(string)
			v = envRef.ReplaceAllStringFunc(v, func(ref string) string {
				if got, ok := vars[envRef.FindStringSubmatch(ref)[1]]; ok {
					return got
				}
				return ref // the kubelet leaves an unknown reference as it is
			})
		}
		vars[name] = v
		env = append(env, name+"="+v)
	}
	return env
}
