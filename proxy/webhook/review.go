package webhook

import (
	"encoding/json"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The AdmissionReview of admission.k8s.io/v1, as far as this webhook reads
// and writes it: the request's identity, what is admitted, and the Pod's
// images and annotations. Fields it does not know are ignored.
const (
	reviewAPIVersion = "admission.k8s.io/v1"
	reviewKind       = "AdmissionReview"
)

type admissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *admissionRequest  `json:"request,omitempty"`
	Response   *admissionResponse `json:"response,omitempty"`
}

type groupVersionResource struct {
	Group    string `json:"group"`
	Version  string `json:"version"`
	Resource string `json:"resource"`
}

type admissionRequest struct {
	UID         string               `json:"uid"`
	Resource    groupVersionResource `json:"resource"`
	SubResource string               `json:"subResource"`
	Namespace   string               `json:"namespace"`
	Name        string               `json:"name"`
	Operation   string               `json:"operation"`
	Object      json.RawMessage      `json:"object"`
	OldObject   json.RawMessage      `json:"oldObject"`
	DryRun      *bool                `json:"dryRun"`
}

type admissionResponse struct {
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	PatchType string   `json:"patchType,omitempty"`
	Patch     []byte   `json:"patch,omitempty"` // base64, as encoding/json writes []byte
	Warnings  []string `json:"warnings,omitempty"`
}

type container struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

type pod struct {
	Metadata struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers          []container `json:"containers"`
		InitContainers      []container `json:"initContainers"`
		EphemeralContainers []container `json:"ephemeralContainers"`
	} `json:"spec"`
}

// VariantsAnnotation is the Pod annotation that maps each image the
// webhook replaced, as written, to the image it wrote instead (a JSON
// object).
const VariantsAnnotation = "regnorm.dev/variants"

// slot is one image of a Pod: where it is (its JSON pointer) and what it
// names.
type slot struct {
	path  string
	image string
}

// slots are the images of p that the request may change: every container,
// init container and ephemeral container's on a Pod's creation. On an
// update through the ephemeralcontainers subresource, old is the Pod as it
// was: only the ephemeral containers it did not have (by name) are the
// request's; the API server refuses any change to the others ("existing
// ephemeral containers may not be changed"), and the other containers
// cannot change at all.
func (p *pod) slots(old *pod) []slot {
	var out []slot
	add := func(list string, cs []container, existed map[string]bool) {
		for i, c := range cs {
			if !existed[c.Name] {
				out = append(out, slot{path: "/spec/" + list + "/" + strconv.Itoa(i) + "/image", image: c.Image})
			}
		}
	}
	if old == nil {
		add("containers", p.Spec.Containers, nil)
		add("initContainers", p.Spec.InitContainers, nil)
		add("ephemeralContainers", p.Spec.EphemeralContainers, nil)
		return out
	}
	existed := make(map[string]bool, len(old.Spec.EphemeralContainers))
	for _, c := range old.Spec.EphemeralContainers {
		existed[c.Name] = true
	}
	add("ephemeralContainers", p.Spec.EphemeralContainers, existed)
	return out
}

// patchOp is one JSONPatch (RFC 6902) operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// escapePointer escapes a JSON pointer token (RFC 6901): "~" as "~0", "/"
// as "~1".
func escapePointer(token string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(token)
}

// Bounds of the annotation the webhook writes.
const (
	// annotationsLimit is Kubernetes' bound on all of an object's
	// annotations, keys and values together (TotalAnnotationSizeLimitB):
	// past it the API server refuses the Pod.
	annotationsLimit = 256 << 10
	// maxVariantsValue bounds the value of VariantsAnnotation.
	maxVariantsValue = 64 << 10
)

// patch is the JSONPatch that writes replaced (slot → image) into the Pod,
// and, when annotate, the replacements into the annotation, merged with
// what it held (a value that is not such a map is replaced). Nil when
// nothing changes. The annotation stays within maxVariantsValue and leaves
// the Pod's annotations within annotationsLimit: the replacements that do
// not fit are left out of it (this admission's first, then those it held,
// each in the order of their images), and dropped says how many; when
// none of this admission's fits, the annotation is left as it was.
func (p *pod) patch(slots []slot, replaced map[int]string, annotate bool) (patch []byte, dropped int, err error) {
	if len(replaced) == 0 {
		return nil, 0, nil
	}
	var ops []patchOp
	idx := make([]int, 0, len(replaced))
	for i := range replaced {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	held := map[string]string{}
	if old, ok := p.Metadata.Annotations[VariantsAnnotation]; ok {
		if json.Unmarshal([]byte(old), &held) != nil {
			held = map[string]string{}
		}
	}
	now := map[string]string{}
	for _, i := range idx {
		ops = append(ops, patchOp{Op: "replace", Path: slots[i].path, Value: replaced[i]})
		now[slots[i].image] = replaced[i]
	}
	if annotate {
		value, kept, left := variantsValue(now, held, p.annotationRoom())
		dropped = left
		if kept == 0 {
			dropped = len(now) // what it held stays
		} else {
			if p.Metadata.Annotations == nil {
				ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations", Value: map[string]string{VariantsAnnotation: value}})
			} else {
				ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(VariantsAnnotation), Value: value})
			}
		}
	}
	patch, err = json.Marshal(ops)
	return patch, dropped, err
}

// annotationRoom is how long VariantsAnnotation's value may be: within
// maxVariantsValue, and within annotationsLimit with the Pod's other
// annotations.
func (p *pod) annotationRoom() int {
	others := 0
	for k, v := range p.Metadata.Annotations {
		if k != VariantsAnnotation {
			others += len(k) + len(v)
		}
	}
	return min(maxVariantsValue, annotationsLimit-others-len(VariantsAnnotation))
}

// variantsValue is the JSON object of the entries of now and held (now's
// where both have an image) that fit in room bytes: now's first, then
// held's, each by image; the object's keys sorted, as json.Marshal writes
// a map (the same Pod, the same bytes). kept is how many of now's it
// holds, left how many entries did not fit.
func variantsValue(now, held map[string]string, room int) (value string, kept, left int) {
	chosen := map[string]string{}
	size := len("{}")
	add := func(entries map[string]string, skip map[string]string) (n int) {
		for _, image := range slices.Sorted(maps.Keys(entries)) {
			if _, ok := skip[image]; ok {
				continue
			}
			k, _ := json.Marshal(image)
			v, _ := json.Marshal(entries[image])
			grow := len(k) + 1 + len(v)
			if len(chosen) > 0 {
				grow++ // the comma
			}
			if size+grow > room {
				left++
				continue
			}
			size += grow
			chosen[image] = entries[image]
			n++
		}
		return n
	}
	kept = add(now, nil)
	add(held, now)
	out, _ := json.Marshal(chosen) // keys sorted
	return string(out), kept, left
}
