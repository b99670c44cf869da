package deploy_test

import (
	"fmt"
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
