package webhook

import (
	"encoding/json"
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

// patch is the JSONPatch that writes replaced (slot → image) into the Pod,
// and, when annotate, the replacements into the annotation, merged with
// what it held (a value that is not such a map is replaced). Nil when
// nothing changes.
func (p *pod) patch(slots []slot, replaced map[int]string, annotate bool) ([]byte, error) {
	if len(replaced) == 0 {
		return nil, nil
	}
	var ops []patchOp
	idx := make([]int, 0, len(replaced))
	for i := range replaced {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	variants := map[string]string{}
	if old, ok := p.Metadata.Annotations[VariantsAnnotation]; ok {
		if json.Unmarshal([]byte(old), &variants) != nil {
			variants = map[string]string{}
		}
	}
	for _, i := range idx {
		ops = append(ops, patchOp{Op: "replace", Path: slots[i].path, Value: replaced[i]})
		variants[slots[i].image] = replaced[i]
	}
	if annotate {
		value, err := json.Marshal(variants) // keys sorted: the same Pod, the same bytes
		if err != nil {
			return nil, err
		}
		if p.Metadata.Annotations == nil {
			ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations", Value: map[string]string{VariantsAnnotation: string(value)}})
		} else {
			ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(VariantsAnnotation), Value: string(value)})
		}
	}
	return json.Marshal(ops)
}
