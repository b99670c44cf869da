package rewrite

import (
	"slices"
	"strconv"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// IsImageConfigType reports whether a config descriptor's media type is
// one an image config is pushed with: Docker's, OCI's, or the
// application/octet-stream of Docker before 1.11.
func IsImageConfigType(mediaType string) bool {
	switch mediaType {
	case MediaTypeDockerConfig, ocispec.MediaTypeImageConfig, MediaTypeOctetStream:
		return true
	}
	return false
}

// KindDiffIDs: a config's rootfs.diff_ids entry got the diff ID of the
// layer the manifest lists at its place, computed from the layer's verified
// blob (or the entry was added, where the list was short, or removed, where
// it was long). The layers, and so the files the container sees, are the
// same.
const KindDiffIDs = "diff-ids"

// DiffIDCheck is what an image's manifest and config alone say of its
// diff IDs, before any layer is read: which layers must be read for the
// diff IDs rule to decide.
type DiffIDCheck struct {
	// Applies: the config is an image config whose diff IDs the rule may
	// mend (see CheckDiffIDs). When false, the rule needs no layer.
	Applies bool
	// Count: the config lists another number of diff IDs than the manifest
	// lists layers. containerd refuses the image before it reads a layer
	// ("number of layers and diffIDs don't match"), so the image is broken
	// for sure, and every layer's diff ID is needed.
	Count bool
	// Suspect are the layers to read, in manifest order, each once: every
	// layer containerd reads when Count is set, else the layers whose diff
	// ID the config makes suspect.
	Suspect []digest.Digest
}

// CheckDiffIDs is the diff IDs rule's cheap look: it reads the manifest
// (plan) and the config blob (verified by the caller), never a layer, and
// names the layers worth reading. A diff ID is suspect when it is no
// digest; when its layer is declared compressed and the diff ID is the
// digest of a blob the manifest lists (a compressed blob's digest is not its
// tar's: what buildpacks lifecycle 0.21.11 wrote, buildpacks/lifecycle#1662);
// or when its layer is declared as a plain tar and the diff ID is not the
// layer's own digest (right only if the blob is compressed after all). Any
// other wrong diff ID looks like a right one until the layer is read.
//
// A config that is not an image config (no rootfs of type "layers" with a
// diff_ids array), and an image whose manifest lists one blob at two places
// with different diff IDs (the manifest's layers may be what is wrong,
// paketo-buildpacks/builder-noble-java-tiny#293: the config cannot be
// mended from them), need nothing read: the rule leaves them as they are.
// Foreign, non-distributable and encrypted layers are never read.
func CheckDiffIDs(plan ManifestPlan, config []byte) DiffIDCheck {
	cdoc, err := parseDoc(config)
	if err != nil {
		return DiffIDCheck{}
	}
	existing, ok := configDiffIDs(cdoc)
	if !ok || listsOneBlobTwice(plan.Layers, existing) {
		return DiffIDCheck{}
	}
	check := DiffIDCheck{Applies: true}
	check.Count = len(existing) != len(plan.Layers)
	blobs := map[string]bool{}
	for _, l := range plan.Layers {
		blobs[l.Digest.String()] = true
	}
	for i, l := range plan.Layers {
		if !IsScannableLayer(l.MediaType) || slices.Contains(check.Suspect, l.Digest) {
			continue
		}
		if check.Count || suspectDiffID(l, existing[i], blobs) {
			check.Suspect = append(check.Suspect, l.Digest)
		}
	}
	return check
}

func suspectDiffID(l ocispec.Descriptor, id string, blobs map[string]bool) bool {
	if _, err := digest.Parse(id); err != nil {
		return true
	}
	switch l.MediaType {
	case MediaTypeDockerLayer, ocispec.MediaTypeImageLayer:
		return id != l.Digest.String()
	}
	return blobs[id]
}

// configDiffIDs is the config's rootfs.diff_ids, as strings; ok is false
// when the config is no image config.
func configDiffIDs(cdoc *jsonDoc) ([]string, bool) {
	if t, _ := cdoc.str("rootfs", "type"); t != "layers" {
		return nil, false
	}
	n, ok := cdoc.arrayLen("rootfs", "diff_ids")
	if !ok || n > MaxLayers {
		return nil, false
	}
	out := make([]string, n)
	for i := range out {
		out[i], _ = cdoc.str("rootfs", "diff_ids", strconv.Itoa(i))
	}
	return out, true
}

// listsOneBlobTwice reports whether the manifest lists one blob at two
// places whose diff IDs (as far as the config lists them) differ.
func listsOneBlobTwice(layers []ocispec.Descriptor, diffIDs []string) bool {
	seen := map[digest.Digest]string{}
	for i, l := range layers {
		if i >= len(diffIDs) {
			break
		}
		if id, ok := seen[l.Digest]; ok && id != diffIDs[i] {
			return true
		}
		seen[l.Digest] = diffIDs[i]
	}
	return false
}

// diffIDList is the config's rootfs.diff_ids as NormalizeManifest edits
// it: the value wanted at each place of the manifest's layers, and why.
type diffIDList struct {
	existing []string
	want     []string // "" where unknown: the existing value stays
	byRule   []bool   // the diff IDs rule set it (else a repackaging)
}

func newDiffIDList(existing []string, layers int) *diffIDList {
	return &diffIDList{existing: existing, want: make([]string, layers), byRule: make([]bool, layers)}
}

// edits are the config edits and the diff IDs rule's changes that make the
// list the one wanted. When the list's length must change, every place
// must be known; else nothing is changed by the rule (ok false).
func (d *diffIDList) edits() (edits []edit, changes []Change, ok bool) {
	if len(d.existing) == len(d.want) {
		for i, w := range d.want {
			if w == "" || w == d.existing[i] {
				continue
			}
			idx := strconv.Itoa(i)
			edits = append(edits, edit{path: []string{"rootfs", "diff_ids", idx}, value: quote(w)})
			if d.byRule[i] {
				changes = append(changes, Change{Kind: KindDiffIDs, Path: "rootfs.diff_ids[" + idx + "]", Old: d.existing[i], New: w})
			}
		}
		return edits, changes, true
	}
	if slices.Contains(d.want, "") {
		return nil, nil, false
	}
	list := []byte{'['}
	for i, w := range d.want {
		if i > 0 {
			list = append(list, ',')
		}
		list = append(list, quote(w)...)
	}
	list = append(list, ']')
	for i := range max(len(d.want), len(d.existing)) {
		var old, w string
		if i < len(d.existing) {
			old = d.existing[i]
		}
		if i < len(d.want) {
			w = d.want[i]
		}
		if old != w && (i >= len(d.want) || d.byRule[i]) {
			changes = append(changes, Change{Kind: KindDiffIDs, Path: "rootfs.diff_ids[" + strconv.Itoa(i) + "]", Old: old, New: w})
		}
	}
	return []edit{{path: []string{"rootfs", "diff_ids"}, value: list}}, changes, true
}
