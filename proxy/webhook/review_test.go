package webhook

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestPatchKeepsTheAnnotationsWithinKubernetesLimit: the annotation that
// records the replacements grows with the Pod's images (256 of them, each
// written twice, a reference up to a few hundred bytes) and with what it
// held; Kubernetes refuses a Pod whose annotations, keys and values
// together, pass 256 KiB, so a patch that pushes them past it makes the
// Pod's creation fail whatever the failure policy. The images are all
// replaced; the annotation holds what fits, is valid JSON, and keeps the
// Pod within the limit; with no room at all it is left as it was.
func TestPatchKeepsTheAnnotationsWithinKubernetesLimit(t *testing.T) {
	t.Parallel()
	variant := "sha256:" + strings.Repeat("b", 64)
	for _, tc := range []struct {
		name   string
		others int // bytes of the Pod's other annotations
	}{
		{"no other annotation", 0},
		{"others take most of the room", 200 << 10},
		{"others leave no room", annotationsLimit - 128},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var p pod
			p.Metadata.Annotations = map[string]string{
				"example.com/other": strings.Repeat("x", tc.others),
				VariantsAnnotation:  `{"held/app@sha256:` + strings.Repeat("c", 64) + `":"held/app@` + variant + `"}`,
			}
			if tc.others > 0 {
				// The Pod as created is within the limit, by a few bytes.
				p.Metadata.Annotations["example.com/other"] = strings.Repeat("x", tc.others-len("example.com/other")-len(VariantsAnnotation)-len(p.Metadata.Annotations[VariantsAnnotation]))
			}
			var slots []slot
			replaced := map[int]string{}
			for i := range MaxImages {
				image := fmt.Sprintf("registry.example.com/%s/app-%03d:v1.2.3@sha256:%s", strings.Repeat("team", 40), i, strings.Repeat("a", 64))
				slots = append(slots, slot{path: fmt.Sprintf("/spec/containers/%d/image", i), image: image})
				replaced[i] = image[:strings.LastIndex(image, "@")+1] + variant
			}
			raw, dropped, err := p.patch(slots, replaced, true)
			if err != nil {
				t.Fatal(err)
			}
			var ops []struct {
				Op, Path string
				Value    any
			}
			if err := json.Unmarshal(raw, &ops); err != nil {
				t.Fatal(err)
			}
			images, total := 0, 0
			annotations := map[string]string{}
			for k, v := range p.Metadata.Annotations {
				annotations[k] = v
			}
			for _, op := range ops {
				switch {
				case strings.HasPrefix(op.Path, "/spec/containers/"):
					images++
				case op.Path == "/metadata/annotations/regnorm.dev~1variants":
					annotations[VariantsAnnotation] = op.Value.(string)
				default:
					t.Fatalf("op %s %s", op.Op, op.Path)
				}
			}
			if images != MaxImages {
				t.Errorf("%d images replaced, want %d", images, MaxImages)
			}
			for k, v := range annotations {
				total += len(k) + len(v)
			}
			if total > annotationsLimit {
				t.Errorf("the patched Pod's annotations are %d bytes, past Kubernetes' %d", total, annotationsLimit)
			}
			value := annotations[VariantsAnnotation]
			if len(value) > maxVariantsValue {
				t.Errorf("%s is %d bytes, past %d", VariantsAnnotation, len(value), maxVariantsValue)
			}
			var recorded map[string]string
			if err := json.Unmarshal([]byte(value), &recorded); err != nil {
				t.Fatalf("%s = %.80q…: %v", VariantsAnnotation, value, err)
			}
			if len(recorded)+dropped != MaxImages+1 {
				t.Errorf("%d entries recorded and %d dropped, of %d", len(recorded), dropped, MaxImages+1)
			}
			if tc.others == 0 && len(recorded) < 64 {
				t.Errorf("only %d entries in %d bytes", len(recorded), len(value))
			}
		})
	}
}
