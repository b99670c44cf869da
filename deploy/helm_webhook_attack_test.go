package deploy_test

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestChartWebhookStaysInsideTheCluster: the webhook's port rides on
// regnorm's Service, so with service.type NodePort (the chart's way for
// nodes to reach regnorm on 127.0.0.1) or LoadBalancer it gets a node port
// (or a load balancer's port) of its own too: every node's address then
// answers AdmissionReviews, from wherever the nodes can be reached, and
// the webhook does not ask who calls it. Only the API server calls it,
// through the Service named in the webhook configuration: no Service that
// is reachable from outside the cluster may carry the webhook's port.
func TestChartWebhookStaysInsideTheCluster(t *testing.T) {
	t.Parallel()
	for _, values := range []string{
		`{webhook: {enabled: true, clients: ["1.6.8"]}, service: {type: NodePort, nodePort: 30500}}`,
		`{webhook: {enabled: true, clients: ["1.6.8"]}, service: {type: LoadBalancer}}`,
	} {
		for _, o := range render(t, values) {
			if o.GetKind() != "Service" {
				continue
			}
			typ, _, _ := unstructured.NestedString(o.Object, "spec", "type")
			if typ == "" || typ == "ClusterIP" {
				continue
			}
			ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
			for _, p := range ports {
				if p := p.(map[string]any); p["targetPort"] == "webhook" {
					t.Errorf("%s: Service %s of type %s exposes the webhook's port: %v", values, o.GetName(), typ, fmt.Sprint(p))
				}
			}
		}
	}
}

// TestChartWebhookClusterCANeedsCallerNames: values.yaml offers kube-root-ca.crt
// (the cluster CA, published in every namespace) as webhook.clientCA, and
// says "set clientNames: that CA signs every node's client certificate
// too"; but nothing makes the operator do it. Without clientNames regnorm
// answers any certificate that CA signed for client authentication: every
// kubelet's (/var/lib/kubelet/pki/kubelet-client-current.pem on each node,
// so any node or any Pod with a hostPath of it), kubeadm's admin.conf, any
// CSR approved for kubernetes.io/kube-apiserver-client. Each of them can
// then have regnorm read images with its upstream credentials, make and
// pin variants (docs/security.md). With the cluster CA (kube-root-ca.crt
// by ConfigMap) the chart must refuse to render without webhook.clientNames.
func TestChartWebhookClusterCANeedsCallerNames(t *testing.T) {
	t.Parallel()
	values := `{webhook: {enabled: true, clients: ["2.1"], clientCA: {configMapName: kube-root-ca.crt}}}`
	objs, err := renderErr(t, values)
	if err == nil {
		for _, o := range objs {
			if o.GetKind() == "ConfigMap" && o.GetName() == "regnorm" {
				cfg, _, _ := unstructured.NestedString(o.Object, "data", "regnorm.yaml")
				t.Errorf("%s rendered; regnorm answers every certificate the cluster CA signed:\n%s", values, cfg)
			}
		}
		return
	}
	if !strings.Contains(err.Error(), "webhook.clientNames") {
		t.Errorf("%s: got %v, want an error naming webhook.clientNames", values, err)
	}
}
