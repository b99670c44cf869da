package charttest_test

import (
	"strings"
	"testing"

	"github.com/regnorm/regnorm/internal/charttest"
)

const chartDir = "../../deploy/helm/regnorm"

// TestRenderPicksAnObjectWithTheValuesApplied renders the chart with a value
// changed and takes the Service by kind and name: the object is the one the
// templates made of those values, and every other object is there too.
func TestRenderPicksAnObjectWithTheValuesApplied(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		values string
		want   float64
	}{
		{"", 5000},
		{"service:\n  port: 5123\n", 5123},
	} {
		objs, err := charttest.Render(chartDir, tc.values)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := charttest.Find(objs, "Service", "regnorm")
		if err != nil {
			t.Fatal(err)
		}
		ports, _ := svc["spec"].(map[string]any)["ports"].([]any)
		if len(ports) == 0 {
			t.Fatalf("values %q: Service without ports: %v", tc.values, svc)
		}
		if got := ports[0].(map[string]any)["port"]; got != tc.want {
			t.Errorf("values %q: port %v, want %v", tc.values, got, tc.want)
		}
		if _, err := charttest.Find(objs, "Deployment", "regnorm"); err != nil {
			t.Error(err)
		}
	}
}

// TestFindSaysWhatThereIs: an object the chart does not render is an error
// that names it and lists what was rendered.
func TestFindSaysWhatThereIs(t *testing.T) {
	t.Parallel()
	objs, err := charttest.Render(chartDir, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = charttest.Find(objs, "MutatingWebhookConfiguration", "regnorm-absent")
	if err == nil || !strings.Contains(err.Error(), `MutatingWebhookConfiguration "regnorm-absent"`) ||
		!strings.Contains(err.Error(), "Service/regnorm") {
		t.Errorf("got %v, want an error naming the object and listing Service/regnorm", err)
	}
	if _, err := charttest.Find(objs, "Service", "regnorm-absent"); err == nil {
		t.Error("a Service of another name found")
	}
}

// TestRenderErrors: values that are not YAML and a chart that is not there
// are errors, not an empty list.
func TestRenderErrors(t *testing.T) {
	t.Parallel()
	if _, err := charttest.Render(chartDir, "service: [\n"); err == nil {
		t.Error("values that are not YAML accepted")
	}
	if _, err := charttest.Render(t.TempDir(), ""); err == nil {
		t.Error("a directory without a chart rendered")
	}
}
