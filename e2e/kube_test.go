//go:build e2e

package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/regnorm/regnorm/internal/charttest"
)

// A real control plane for admission tests: Debian's etcd and kube-apiserver
// v1.36.3, built by scripts/test-deps.sh. No controller-manager, scheduler
// or kubelet: a created Pod stays Pending, and what is stored is what
// admission (the webhooks) made of it.
var (
	etcdBin          = os.Getenv("REGNORM_ETCD_BIN")
	kubeAPIServerBin = os.Getenv("REGNORM_KUBE_APISERVER_BIN")
)

// chartDir is regnorm's Helm chart, from e2e/.
const chartDir = "../deploy/helm/regnorm"

// kubeAPIServer is a running kube-apiserver with its own etcd, on 127.0.0.1,
// and an admin client for it (a client certificate in system:masters).
// Both processes are stopped, and waited for, when the test ends.
type kubeAPIServer struct {
	// URL is https://127.0.0.1:PORT.
	URL string
	// CA issued the API server's serving certificate and the admin client
	// certificate; it can issue a webhook's serving certificate too
	// (CA.issue), with CA.PEM as the webhook's caBundle.
	CA     *testCA
	proc   *process
	client *http.Client

	mu        sync.Mutex
	resources map[string][]apiResource // by apiVersion, from discovery
}

// startKube starts etcd and kube-apiserver, with extraArgs added to the API
// server's flags (say "--disable-admission-plugins=..."), and returns when
// the API server's /readyz answers ok. The time that took is logged.
func startKube(t *testing.T, extraArgs ...string) *kubeAPIServer {
	t.Helper()
	began := time.Now()
	dir := t.TempDir()
	etcdURL, etcd := startEtcd(t)

	ca := newTestCA(t, "regnorm-e2e-kube-ca")
	serving := ca.issue(t, "kube-apiserver", nil, "127.0.0.1")
	admin := ca.issue(t, "regnorm-e2e-admin", []string{"system:masters"})
	servingCert, servingKey := serving.write(t, dir, "serving")
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	saPub, saKey := serviceAccountKeys(t, dir)

	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	args := append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + port,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + servingCert, "--tls-private-key-file=" + servingKey,
		"--client-ca-file=" + caFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
		// No Endpoints for the kubernetes Service: nothing routes to it.
		"--endpoint-reconciler-type=none",
	}, extraArgs...)
	p := start(t, "kube-apiserver", kubeAPIServerBin, args...)
	// Stopped before etcd (cleanups run last first), and timed.
	t.Cleanup(func() {
		stopping := time.Now()
		p.stop()
		t.Logf("kube-apiserver stopped in %v", time.Since(stopping).Round(time.Millisecond))
	})

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	k := &kubeAPIServer{URL: "https://" + addr, CA: ca, proc: p, resources: map[string][]apiResource{},
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{admin.tlsCertificate(t)}},
		}}}
	t.Cleanup(k.client.CloseIdleConnections)
	k.waitReady(t, etcd)
	t.Logf("control plane (etcd %s, kube-apiserver %s) ready in %v", etcdURL, k.URL, time.Since(began).Round(time.Millisecond))
	return k
}

// startEtcd runs a one-member etcd on 127.0.0.1 (client, peer and metrics
// URLs) with a data directory of its own, and returns its client URL.
func startEtcd(t *testing.T) (string, *process) {
	t.Helper()
	dir := t.TempDir()
	client, peer := "http://"+freeAddr(t), "http://"+freeAddr(t)
	p := start(t, "etcd", etcdBin, "--name=e2e", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=e2e="+peer,
		"--listen-metrics-urls=http://"+freeAddr(t),
		"--logger=zap", "--log-outputs=stderr", "--log-level=warn")
	waitUp(t, client+"/health", p)
	return client, p
}

// waitReady waits for /readyz to answer ok; an exit of the API server or of
// its etcd fails the test at once with what it printed.
func (k *kubeAPIServer) waitReady(t *testing.T, etcd *process) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, p := range []*process{k.proc, etcd} {
			select {
			case <-p.done:
				t.Fatalf("%s exited before kube-apiserver was ready: %v\n%s", p.name, p.cmd.ProcessState, p.out.tail(8<<10))
			default:
			}
		}
		resp, err := k.client.Get(k.URL + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%s: %s", resp.Status, body)
	}
	t.Fatalf("kube-apiserver not ready after 90 s; last answer: %s", last)
}

// kubeStatusError is the API server's answer to a request it refused: its
// HTTP status and the Status object it sent (reason, message).
type kubeStatusError struct {
	Request string
	Code    int
	Reason  string
	Message string
}

func (e *kubeStatusError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.Request, e.Code, e.Reason, e.Message)
}

// isNotFound says whether err is the API server's 404.
func isNotFound(err error) bool {
	var se *kubeStatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// do sends in (JSON-encoded when not nil) and decodes the answer into out
// when it is not nil. An answer other than 2xx is a *kubeStatusError.
func (k *kubeAPIServer) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, k.URL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var status struct{ Reason, Message string }
		json.Unmarshal(b, &status)
		if status.Message == "" {
			status.Message = string(b)
		}
		return &kubeStatusError{Request: method + " " + path, Code: resp.StatusCode, Reason: status.Reason, Message: status.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: %w: %.200s", method, path, err, b)
	}
	return nil
}

// apiResource is one entry of a discovery document (an APIResourceList).
type apiResource struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	Namespaced bool   `json:"namespaced"`
}

// path is the REST path of the collection of kind in apiVersion (in
// namespace if the kind is namespaced), from the server's own discovery,
// plus "/name" when name is set.
func (k *kubeAPIServer) path(apiVersion, kind, namespace, name string) (string, error) {
	prefix := "/apis/" + apiVersion
	if !strings.Contains(apiVersion, "/") {
		prefix = "/api/" + apiVersion
	}
	k.mu.Lock()
	resources, ok := k.resources[apiVersion]
	k.mu.Unlock()
	if !ok {
		var list struct {
			Resources []apiResource `json:"resources"`
		}
		if err := k.do(http.MethodGet, prefix, nil, &list); err != nil {
			return "", fmt.Errorf("discover %s: %w", apiVersion, err)
		}
		resources = list.Resources
		k.mu.Lock()
		k.resources[apiVersion] = resources
		k.mu.Unlock()
	}
	for _, r := range resources {
		if r.Kind != kind || strings.Contains(r.Name, "/") {
			continue
		}
		p := prefix
		if r.Namespaced {
			if namespace == "" {
				return "", fmt.Errorf("%s %s is namespaced: metadata.namespace is not set", apiVersion, kind)
			}
			p += "/namespaces/" + namespace
		}
		p += "/" + r.Name
		if name != "" {
			p += "/" + name
		}
		return p, nil
	}
	return "", fmt.Errorf("the API server has no kind %s in %s", kind, apiVersion)
}

// tryCreate creates obj (any kind the server knows; its apiVersion, kind
// and metadata.namespace say where) and returns the object as the API
// server stored it, after admission. With dryRun, it goes through
// admission (webhooks with sideEffects None or NoneOnDryRun are called) and
// nothing is stored (?dryRun=All).
func (k *kubeAPIServer) tryCreate(obj map[string]any, dryRun bool) (map[string]any, error) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	namespace, _ := meta["namespace"].(string)
	path, err := k.path(apiVersion, kind, namespace, "")
	if err != nil {
		return nil, err
	}
	if dryRun {
		path += "?dryRun=All"
	}
	var out map[string]any
	err = k.do(http.MethodPost, path, obj, &out)
	return out, err
}

// create is tryCreate that fails the test on an error.
func (k *kubeAPIServer) create(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	out, err := k.tryCreate(obj, false)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return out
}

// createYAML is create for an object written as YAML (or JSON).
func (k *kubeAPIServer) createYAML(t *testing.T, doc string) map[string]any {
	t.Helper()
	return k.create(t, parseYAML(t, doc))
}

// dryRunCreate is what creating obj would store (admission done, nothing
// stored).
func (k *kubeAPIServer) dryRunCreate(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	out, err := k.tryCreate(obj, true)
	if err != nil {
		t.Fatalf("dry-run create: %v", err)
	}
	return out
}

// tryGet reads an object; one that is not there is an error for which
// isNotFound is true.
func (k *kubeAPIServer) tryGet(apiVersion, kind, namespace, name string) (map[string]any, error) {
	path, err := k.path(apiVersion, kind, namespace, name)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = k.do(http.MethodGet, path, nil, &out)
	return out, err
}

// getPod is the stored Pod namespace/name.
func (k *kubeAPIServer) getPod(t *testing.T, namespace, name string) map[string]any {
	t.Helper()
	pod, err := k.tryGet("v1", "Pod", namespace, name)
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	return pod
}

// createNamespace creates a namespace with labels (say an opt-out label for
// a webhook's namespaceSelector) and its "default" ServiceAccount, which the
// controller-manager would make and Pod admission requires. (Disabling the
// ServiceAccount admission plugin instead would spare a request, but it
// would also take away the token volume it adds to every Pod of a real
// cluster before the webhooks see it.)
func (k *kubeAPIServer) createNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	meta := map[string]any{"name": name}
	if len(labels) > 0 {
		meta["labels"] = labels
	}
	k.create(t, map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
	k.create(t, map[string]any{"apiVersion": "v1", "kind": "ServiceAccount",
		"metadata": map[string]any{"name": "default", "namespace": name}})
}

// metrics is one scrape of the API server's /metrics, for metricIn (say
// apiserver_admission_webhook_fail_open_count, or
// apiserver_admission_webhook_admission_duration_seconds_count).
func (k *kubeAPIServer) metrics(t *testing.T) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, k.URL+"/metrics", nil)
	resp, err := k.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

// waitAdmission dry-run creates probe until admitted says the answer shows
// what a webhook does: the API server takes a new webhook configuration up
// through a watch, a moment after it is created. It fails the test after
// 30 s with the last answer.
func (k *kubeAPIServer) waitAdmission(t *testing.T, probe map[string]any, admitted func(obj map[string]any) bool) {
	t.Helper()
	var last any
	began := time.Now()
	for deadline := began.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, err := k.tryCreate(probe, true)
		if err == nil && admitted(out) {
			t.Logf("admission took the change up in %v", time.Since(began).Round(time.Millisecond))
			return
		}
		last = out
		if err != nil {
			last = err
		}
	}
	t.Fatalf("admission did not change the probe within 30 s; last answer: %v", last)
}

// podReview is what the test's own webhooks read of an AdmissionReview of
// a Pod.
type podReview struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	DryRun    bool   `json:"dryRun"`
	Object    struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Containers []struct {
				Image string `json:"image"`
			} `json:"containers"`
		} `json:"spec"`
	} `json:"object"`
}

// readReview reads the AdmissionReview r carries; on an error it has
// answered 400 and ok is false.
func readReview(w http.ResponseWriter, r *http.Request) (review podReview, ok bool) {
	var doc struct {
		Request podReview `json:"request"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&doc); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return podReview{}, false
	}
	return doc.Request, true
}

// answerReview allows the reviewed object uid, with patch (JSONPatch
// operations) when there is one.
func answerReview(w http.ResponseWriter, uid string, patch []map[string]any) {
	response := map[string]any{"uid": uid, "allowed": true}
	if patch != nil {
		b, _ := json.Marshal(patch)
		response["patchType"] = "JSONPatch"
		response["patch"] = base64.StdEncoding.EncodeToString(b)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

// newPod is a Pod with one container for each image (c0, c1...).
func newPod(namespace, name string, images ...string) map[string]any {
	containers := []any{}
	for i, img := range images {
		containers = append(containers, map[string]any{"name": fmt.Sprintf("c%d", i), "image": img})
	}
	return map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec":     map[string]any{"containers": containers}}
}

// podImages lists a Pod's images: init containers, containers, ephemeral
// containers, each in order.
func podImages(pod map[string]any) []string {
	spec, _ := pod["spec"].(map[string]any)
	var images []string
	for _, field := range []string{"initContainers", "containers", "ephemeralContainers"} {
		list, _ := spec[field].([]any)
		for _, c := range list {
			img, _ := c.(map[string]any)["image"].(string)
			images = append(images, img)
		}
	}
	return images
}

// annotations is an object's metadata.annotations (nil if it has none).
func annotations(obj map[string]any) map[string]string {
	meta, _ := obj["metadata"].(map[string]any)
	raw, _ := meta["annotations"].(map[string]any)
	if raw == nil {
		return nil
	}
	out := map[string]string{}
	for k, v := range raw {
		out[k], _ = v.(string)
	}
	return out
}

// parseYAML decodes one YAML (or JSON) object.
func parseYAML(t *testing.T, doc string) map[string]any {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatalf("parse YAML: %v\n%s", err, doc)
	}
	return obj
}

// renderChartObject renders regnorm's chart with values (YAML; "" for the
// defaults) as release "regnorm" in namespace "regnorm", and returns the
// object of this kind and name, say ("MutatingWebhookConfiguration",
// "regnorm-pinned-digests").
func renderChartObject(t *testing.T, values, kind, name string) map[string]any {
	t.Helper()
	objs, err := charttest.Render(chartDir, values)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := charttest.Find(objs, kind, name)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// pointWebhooksAt makes every webhook of a Mutating- or
// ValidatingWebhookConfiguration call url (https://127.0.0.1:PORT/path)
// trusting caPEM, in place of the clientConfig it has (the chart's names a
// Service, which nothing routes to here).
func pointWebhooksAt(t *testing.T, cfg map[string]any, url string, caPEM []byte) {
	t.Helper()
	webhooks, _ := cfg["webhooks"].([]any)
	if len(webhooks) == 0 {
		t.Fatalf("no webhooks in %v", cfg["metadata"])
	}
	for _, w := range webhooks {
		w.(map[string]any)["clientConfig"] = map[string]any{"url": url, "caBundle": base64.StdEncoding.EncodeToString(caPEM)}
	}
}

// testCA issues certificates for a test's servers and clients.
type testCA struct {
	// PEM is the CA's certificate: a caBundle, a --client-ca-file.
	PEM  []byte
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serialNumber(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert: cert, key: key}
}

// keyPair is a certificate and its key, PEM-encoded.
type keyPair struct{ CertPEM, KeyPEM []byte }

// issue makes a certificate for cn in the organizations orgs (Kubernetes
// reads them as groups), for server and client use, valid for hosts (IP
// addresses or DNS names).
func (ca *testCA) issue(t *testing.T, cn string, orgs []string, hosts ...string) keyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serialNumber(t), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
}

// write stores the pair as dir/name.crt and dir/name.key and returns their
// paths (a certFile and keyFile setting).
func (p keyPair) write(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, p.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, p.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// tlsCertificate is the pair for a tls.Config.
func (p keyPair) tlsCertificate(t *testing.T) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serialNumber(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// serviceAccountKeys writes the RSA key pair the API server signs and
// checks service account tokens with, and returns the public and private
// key files.
func serviceAccountKeys(t *testing.T, dir string) (pubFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile, keyFile = filepath.Join(dir, "sa.pub"), filepath.Join(dir, "sa.key")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	return pubFile, keyFile
}
