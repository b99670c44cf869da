// Package charttest renders regnorm's Helm chart the way `helm template`
// does, for tests that need the chart's objects as a cluster would get them:
// the end-to-end tests apply them to a real kube-apiserver.
//
// It is test support, apart from internal/regtest because it compiles Helm
// and client-go's scheme: only the tests that render the chart pay for them.
// Nothing outside _test.go files and e2e imports it.
package charttest

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Release is the release every render is for, as the chart tests in deploy/
// render it: a release named "regnorm" in the namespace "regnorm".
const Release = "regnorm"

// Render renders the chart in dir with values (YAML, as a -f file would
// hold them; "" for the defaults) and returns its objects, decoded as
// encoding/json decodes JSON (numbers are float64), in template file
// order and then document order. A template that fails (a `required`
// value missing, a `fail`) is an error, as with helm.
func Render(dir, values string) ([]map[string]any, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(values), &vals); err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	renderVals, err := chartutil.ToRenderValues(chrt, vals,
		chartutil.ReleaseOptions{Name: Release, Namespace: Release, IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Render(chrt, renderVals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", dir, err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var objs []map[string]any
	for _, name := range names {
		dec := yamlutil.NewYAMLOrJSONDecoder(strings.NewReader(files[name]), 4096)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if len(obj) > 0 {
				objs = append(objs, obj)
			}
		}
	}
	return objs, nil
}

// Find returns the object of objs with this kind and metadata.name. None is
// an error that lists what there is, so that a renamed template says so.
func Find(objs []map[string]any, kind, name string) (map[string]any, error) {
	var have []string
	for _, obj := range objs {
		k, _ := obj["kind"].(string)
		meta, _ := obj["metadata"].(map[string]any)
		n, _ := meta["name"].(string)
		if k == kind && n == name {
			return obj, nil
		}
		have = append(have, k+"/"+n)
	}
	return nil, fmt.Errorf("no %s %q rendered; the chart has %s", kind, name, strings.Join(have, ", "))
}
