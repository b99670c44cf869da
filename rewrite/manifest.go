package rewrite

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types regnorm reads.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	// Docker's layer types: uncompressed, gzip, and the zstd type buildkit
	// writes when oci-mediatypes is off (containerd 2.0+ unpacks it).
	MediaTypeDockerLayer     = "application/vnd.docker.image.rootfs.diff.tar"
	MediaTypeDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerLayerZstd = "application/vnd.docker.image.rootfs.diff.tar.zstd"
	// MediaTypeOctetStream is what Docker before 1.11 put on image configs.
	MediaTypeOctetStream = "application/octet-stream"
)

// Change kinds.
const (
	// KindConfigMediaType: an image config declared as octet-stream got the
	// config media type of its manifest's format.
	KindConfigMediaType = "config-media-type"
	// KindChildManifest: an index entry points at its child's normalized
	// manifest.
	KindChildManifest = "child-manifest"
	// KindZstdMediaType: a layer of Docker's zstd type got the OCI zstd
	// type; the blob is the same.
	KindZstdMediaType = "zstd-media-type"
	// KindZstdGzip: a zstd layer was recompressed with gzip (its tar, and
	// so its diff ID, unchanged unless the symlink rule changed it too).
	KindZstdGzip = "zstd-gzip"
	// KindIndexSize: an index entry got the size of the child it names,
	// as fetched and verified by its digest.
	KindIndexSize = "index-size"
	// KindLayerMediaType: a layer declared as OCI's plain tar whose blob is
	// compressed got the type of its compression; the blob is the same.
	KindLayerMediaType = "layer-media-type"
)

// Change is one thing normalization changed, and where.
type Change struct {
	Kind string `json:"kind"`
	// Path locates the changed value, e.g. "config.mediaType" or "manifests[2]".
	Path string `json:"path"`
	Old  string `json:"old"`
	New  string `json:"new"`
	// Details says more where a kind needs it: for symlink-xattrs, one
	// "path: key, key" line per entry stripped, for the entries a layer's
	// record lists.
	Details []string `json:"details,omitempty"`
	// Unlisted is how many more there were than Details lists.
	Unlisted int `json:"unlisted,omitempty"`
}

// Result is a normalized document. When Changes is empty, Content is the
// input itself, byte for byte. Digest is the sha256 digest of Content.
type Result struct {
	MediaType string
	Content   []byte
	Digest    digest.Digest
	Changes   []Change
	// Config is the new config blob when normalization changed it (new
	// diff_ids), with its descriptor; nil otherwise.
	Config     []byte
	ConfigDesc ocispec.Descriptor
}

// Changed reports whether normalization changed anything.
func (r Result) Changed() bool { return len(r.Changes) > 0 }

// ErrNotImage means the document is not something this rule reads (for
// example an index passed as a manifest).
var ErrNotImage = errors.New("not an image manifest")

// IsIndex reports whether mediaType is an OCI index or a Docker manifest list.
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == MediaTypeDockerManifestList
}

// IsManifest reports whether mediaType is an OCI or Docker schema 2 image
// manifest.
func IsManifest(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageManifest || mediaType == MediaTypeDockerManifest
}

// ManifestPlan is what a manifest refers to, for deciding what to read
// before NormalizeManifest runs.
type ManifestPlan struct {
	Config ocispec.Descriptor
	Layers []ocispec.Descriptor
	// ConfigMediaTypeSuspect: the config is declared octet-stream, so the
	// config blob must be read to decide the media type rule.
	ConfigMediaTypeSuspect bool
}

// Limits on what regnorm normalizes: beyond them a document is refused
// (and served untouched). No runtime unpacks this many layers (overlayfs
// stops near 500), and every listed blob costs the proxy a fetch and a scan.
const (
	MaxLayers        = 1000
	MaxIndexChildren = 1000
)

// PlanManifest reads a manifest's descriptors.
func PlanManifest(mediaType string, manifest []byte) (ManifestPlan, error) {
	doc, err := parseManifest(mediaType, manifest)
	if err != nil {
		return ManifestPlan{}, err
	}
	var plan ManifestPlan
	if plan.Config, err = descriptorAt(doc, "config"); err != nil {
		return ManifestPlan{}, err
	}
	plan.ConfigMediaTypeSuspect = plan.Config.MediaType == MediaTypeOctetStream
	n, ok := doc.arrayLen("layers")
	if !ok {
		return ManifestPlan{}, fmt.Errorf("%w: layers is not an array", ErrNotImage)
	}
	if n > MaxLayers {
		return ManifestPlan{}, fmt.Errorf("%w: %d layers, more than %d", ErrNotImage, n, MaxLayers)
	}
	for i := range n {
		desc, err := descriptorAt(doc, "layers", strconv.Itoa(i))
		if err != nil {
			return ManifestPlan{}, err
		}
		plan.Layers = append(plan.Layers, desc)
	}
	return plan, nil
}

// ManifestInput is what NormalizeManifest reads.
type ManifestInput struct {
	MediaType string
	Manifest  []byte
	// Config is the config blob (it must match the manifest's descriptor);
	// it may be nil when the config is not octet-stream and no layer is
	// repackaged.
	Config []byte
	// Layers maps an original layer digest to its repackaged form; layers
	// not in the map stay.
	Layers map[digest.Digest]LayerResult
	// KeepConfigMediaType turns the config media type rule off.
	KeepConfigMediaType bool
	// RetypeDockerZstd turns the zstd media type rule on.
	RetypeDockerZstd bool
	// Compressions maps a layer digest to the compression of its blob, as
	// read (and verified) by the caller, for the layer media type rule.
	Compressions map[digest.Digest]Compression
	// RetypeCompressedTar turns the layer media type rule on: a layer
	// declared as OCI's plain tar whose blob Compressions says is gzip or
	// zstd gets the OCI type of that compression.
	RetypeCompressedTar bool
	// DiffIDs maps an original layer digest to the diff ID of its blob, as
	// computed (from the blob read whole and verified) by the caller, for
	// the diff IDs rule: the layers CheckDiffIDs names, and any others the
	// caller's rules read.
	DiffIDs map[digest.Digest]digest.Digest
	// FixDiffIDs turns the diff IDs rule on: a config whose rootfs.diff_ids
	// entry is not the diff ID DiffIDs gives for the layer at its place
	// gets that diff ID; a list of another length than the layers' is
	// made anew from DiffIDs (only when it gives every layer's).
	FixDiffIDs bool
}

// NormalizeManifest applies the rules to an image manifest.
//
// The config media type rule: a config declared application/octet-stream
// that really is an image config (rootfs.type "layers", one diff_id per
// layer) gets the Docker config type in a Docker manifest and the OCI config
// type in an OCI manifest. Anything else octet-stream (an artifact) is left
// alone.
//
// The zstd media type rule: a layer of Docker's zstd type
// (application/vnd.docker.image.rootfs.diff.tar.zstd) gets the OCI zstd layer
// type; its digest, size and blob stay.
//
// The layer media type rule: a layer declared as OCI's plain tar
// (application/vnd.oci.image.layer.v1.tar) whose blob is gzip or zstd, as
// Compressions says, gets the OCI type of that compression; its digest,
// size and blob stay. A layer of that type that is plain tar stays.
//
// The diff IDs rule: each rootfs.diff_ids entry that is not the diff ID
// DiffIDs gives for its layer gets it (see FixDiffIDs and CheckDiffIDs);
// the config gets a new digest. Layers stay.
//
// The layer rules (symlink xattrs, GNU sparse entries): each repackaged
// layer's descriptor gets its new digest and size, and its rootfs.diff_ids
// entry in the config the new uncompressed digest; the config then gets a
// new digest, and the manifest points at it. A layer's change is reported
// under the kind of each rule that changed it (symlink-xattrs with the
// xattrs removed, gnu-sparse with the entries expanded).
func NormalizeManifest(in ManifestInput) (Result, error) {
	mediaType, manifest, config, layers := in.MediaType, in.Manifest, in.Config, in.Layers
	doc, err := parseManifest(mediaType, manifest)
	if err != nil {
		return Result{}, err
	}
	plan, err := PlanManifest(mediaType, manifest)
	if err != nil {
		return Result{}, err
	}
	var cdoc *jsonDoc
	if config != nil {
		if got := plan.Config.Digest.Algorithm().FromBytes(config); got != plan.Config.Digest || int64(len(config)) != plan.Config.Size {
			return Result{}, fmt.Errorf("config blob does not match descriptor %s", plan.Config.Digest)
		}
		// A config that is not (unambiguous) JSON is not an image config:
		// cdoc stays nil and the rules that need one do not apply.
		cdoc, _ = parseDoc(config)
	}
	var edits, configEdits []edit
	var changes []Change
	var diffs *diffIDList
	if cdoc != nil {
		if existing, ok := configDiffIDs(cdoc); ok {
			diffs = newDiffIDList(existing, len(plan.Layers))
		}
	}
	repacked, remade := false, false

	// (The config media type rule is decided below, once the diff IDs
	// rule has said whether the config's list will match the layers.)
	if in.RetypeDockerZstd {
		for i, desc := range plan.Layers {
			if desc.MediaType != MediaTypeDockerLayerZstd || layers[desc.Digest].MediaType != "" {
				continue // not Docker's zstd type, or recompressed (see below)
			}
			idx := strconv.Itoa(i)
			edits = append(edits, edit{path: []string{"layers", idx, "mediaType"}, value: quote(ocispec.MediaTypeImageLayerZstd)})
			changes = append(changes, Change{Kind: KindZstdMediaType, Path: "layers[" + idx + "].mediaType", Old: desc.MediaType, New: ocispec.MediaTypeImageLayerZstd})
		}
	}
	if in.RetypeCompressedTar {
		for i, desc := range plan.Layers {
			comp := in.Compressions[desc.Digest]
			if desc.MediaType != ocispec.MediaTypeImageLayer || comp == "" || comp == Uncompressed || layers[desc.Digest].MediaType != "" {
				continue // not OCI's plain type, really plain, or recompressed (below)
			}
			idx := strconv.Itoa(i)
			want := LayerMediaType(desc.MediaType, comp)
			edits = append(edits, edit{path: []string{"layers", idx, "mediaType"}, value: quote(want)})
			changes = append(changes, Change{Kind: KindLayerMediaType, Path: "layers[" + idx + "].mediaType", Old: desc.MediaType, New: want})
		}
	}
	for i, desc := range plan.Layers {
		fix, ok := layers[desc.Digest]
		if !ok || fix.Digest == desc.Digest {
			continue
		}
		if diffs == nil || (len(diffs.existing) != len(plan.Layers) && !in.FixDiffIDs) {
			return Result{}, fmt.Errorf("%w: layer %d is repackaged but the config has no matching rootfs.diff_ids", ErrNotImage, i)
		}
		repacked = true
		idx := strconv.Itoa(i)
		edits = append(edits,
			edit{path: []string{"layers", idx, "digest"}, value: quote(fix.Digest.String())},
			edit{path: []string{"layers", idx, "size"}, value: []byte(strconv.FormatInt(fix.Size, 10))},
		)
		retyped := fix.MediaType != "" && fix.MediaType != desc.MediaType
		diffs.want[i] = fix.DiffID.String()
		if old, _ := cdoc.str("rootfs", "diff_ids", idx); old != fix.DiffID.String() && retyped && !fix.Rewrote() {
			// Recompressed byte for byte: the tar is the one the config
			// names, or the image was broken before regnorm saw it: mended
			// by the diff IDs rule, else refused.
			if !in.FixDiffIDs {
				return Result{}, fmt.Errorf("%w: layer %d's tar is %s, its config says %s", ErrNotImage, i, fix.DiffID, old)
			}
			diffs.byRule[i] = true
		}
		if retyped {
			edits = append(edits, edit{path: []string{"layers", idx, "mediaType"}, value: quote(fix.MediaType)})
		}
		switch {
		case fix.Rewrote() || !retyped:
			if fix.Stripped > 0 || fix.Sparse == 0 {
				changes = append(changes, Change{Kind: KindSymlinkXattrs, Path: "layers[" + idx + "]", Old: desc.Digest.String(), New: fix.Digest.String(),
					Details: describeRemovals(fix.Removals), Unlisted: fix.Unlisted()})
			}
			if fix.Sparse > 0 {
				changes = append(changes, Change{Kind: KindGNUSparse, Path: "layers[" + idx + "]", Old: desc.Digest.String(), New: fix.Digest.String(),
					Details: describeExpansions(fix.Expanded), Unlisted: fix.Unexpanded()})
			}
			if retyped {
				changes = append(changes, Change{Kind: KindZstdGzip, Path: "layers[" + idx + "].mediaType", Old: desc.MediaType, New: fix.MediaType})
			}
		default:
			changes = append(changes, Change{Kind: KindZstdGzip, Path: "layers[" + idx + "]", Old: desc.Digest.String(), New: fix.Digest.String(),
				Details: []string{"mediaType " + desc.MediaType + " -> " + fix.MediaType}})
		}
	}
	if diffs != nil {
		if in.FixDiffIDs && !listsOneBlobTwice(plan.Layers, diffs.existing) {
			for i, desc := range plan.Layers {
				if id, ok := in.DiffIDs[desc.Digest]; ok && diffs.want[i] == "" {
					diffs.want[i], diffs.byRule[i] = id.String(), true
				}
			}
		}
		e, c, ok := diffs.edits()
		if !ok && repacked {
			return Result{}, fmt.Errorf("%w: layers are repackaged but the config's rootfs.diff_ids cannot be made to match them", ErrNotImage)
		}
		configEdits = append(configEdits, e...)
		changes = append(changes, c...)
		// A list made anew for the layers makes an image config of a
		// config that was one but for its length.
		remade = ok && len(e) > 0 && len(diffs.existing) != len(plan.Layers)
	}
	if !in.KeepConfigMediaType && plan.ConfigMediaTypeSuspect && cdoc != nil && (isImageConfig(cdoc, len(plan.Layers)) || remade) {
		want := configMediaTypeFor(mediaType)
		edits = append(edits, edit{path: []string{"config", "mediaType"}, value: quote(want)})
		changes = append([]Change{{Kind: KindConfigMediaType, Path: "config.mediaType", Old: MediaTypeOctetStream, New: want}}, changes...)
	}

	var res Result
	if len(configEdits) > 0 {
		newConfig, err := cdoc.splice(configEdits)
		if err != nil {
			return Result{}, err
		}
		res.Config = newConfig
		res.ConfigDesc = ocispec.Descriptor{MediaType: plan.Config.MediaType, Digest: digest.FromBytes(newConfig), Size: int64(len(newConfig))}
		edits = append(edits,
			edit{path: []string{"config", "digest"}, value: quote(res.ConfigDesc.Digest.String())},
			edit{path: []string{"config", "size"}, value: []byte(strconv.FormatInt(res.ConfigDesc.Size, 10))},
		)
	}
	out, err := finish(doc, mediaType, edits, changes)
	if err != nil {
		return Result{}, err
	}
	out.Config, out.ConfigDesc = res.Config, res.ConfigDesc
	return out, nil
}

// IndexInput is what NormalizeIndex reads.
type IndexInput struct {
	MediaType string
	Index     []byte
	// Children maps an original child digest to its normalized descriptor
	// (digest, size, and media type when it changed); entries not in the
	// map keep their digest.
	Children map[digest.Digest]ocispec.Descriptor
	// Sizes are the sizes of the children read to normalize the index, by
	// digest: with FixSizes, an entry that names one of them with another
	// size gets that size. The caller read each child verified against its
	// digest (VerifiedSize): an entry is given the size of the child it
	// names, never of another, and the index holds no child's bytes.
	Sizes map[digest.Digest]int64
	// FixSizes turns the index sizes rule on.
	FixSizes bool
}

// ErrChildMismatch means a child read for an index is not the child its
// digest names.
var ErrChildMismatch = errors.New("child manifest does not match its digest")

// VerifiedSize is the size of a child manifest read for an index (its
// Sizes entry), once its bytes are checked against the digest its entry
// names; ErrChildMismatch if they are another's.
func VerifiedSize(dgst digest.Digest, child []byte) (int64, error) {
	if !dgst.Algorithm().Available() || dgst.Algorithm().FromBytes(child) != dgst {
		return 0, fmt.Errorf("%w: %s", ErrChildMismatch, dgst)
	}
	return int64(len(child)), nil
}

// NormalizeIndex points an index's entries at their children's normalized
// manifests and, with FixSizes, gives an entry that keeps its child the
// size of the child as fetched (Docker's "docker manifest" before 18.09
// wrote wrong sizes, and every containerd refuses the child: "failed size
// validation"). An entry whose vnd.docker.reference.digest names a child
// that was rewritten (buildkit's attestation manifest of a platform) names
// the rewritten child, so that tools still find a platform's attestations;
// the attestation manifest itself is listed as it is. Platform, every other
// annotation and every other field are kept.
func NormalizeIndex(in IndexInput) (Result, error) {
	mediaType := in.MediaType
	if !IsIndex(mediaType) {
		return Result{}, fmt.Errorf("%w: %s is not an index", ErrNotImage, mediaType)
	}
	doc, err := parseDoc(in.Index)
	if err != nil {
		return Result{}, err
	}
	n, ok := doc.arrayLen("manifests")
	if !ok {
		return Result{}, fmt.Errorf("%w: manifests is not an array", ErrNotImage)
	}
	var edits []edit
	var changes []Change
	for i := range n {
		idx := strconv.Itoa(i)
		desc, err := descriptorAt(doc, "manifests", idx)
		if err != nil {
			return Result{}, err
		}
		// An attestation manifest names the child it is about: once that
		// child is rewritten, it names the child the index lists now.
		if ref, ok := doc.str("manifests", idx, "annotations", AnnotationDockerReferenceDigest); ok {
			if next, ok := in.Children[digest.Digest(ref)]; ok && next.Digest.String() != ref {
				edits = append(edits, edit{path: []string{"manifests", idx, "annotations", AnnotationDockerReferenceDigest}, value: quote(next.Digest.String())})
				changes = append(changes, Change{Kind: KindChildManifest, Path: "manifests[" + idx + "].annotations." + AnnotationDockerReferenceDigest,
					Old: ref, New: next.Digest.String()})
			}
		}
		next, ok := in.Children[desc.Digest]
		if !ok || next.Digest == desc.Digest {
			if !in.FixSizes {
				continue
			}
			size, fetched := in.Sizes[desc.Digest]
			if !fetched {
				continue
			}
			if size != desc.Size {
				edits = append(edits, edit{path: []string{"manifests", idx, "size"}, value: []byte(strconv.FormatInt(size, 10))})
				changes = append(changes, Change{Kind: KindIndexSize, Path: "manifests[" + idx + "].size",
					Old: strconv.FormatInt(desc.Size, 10), New: strconv.FormatInt(size, 10)})
			}
			continue
		}
		edits = append(edits,
			edit{path: []string{"manifests", idx, "digest"}, value: quote(next.Digest.String())},
			edit{path: []string{"manifests", idx, "size"}, value: []byte(strconv.FormatInt(next.Size, 10))},
		)
		if next.MediaType != "" && next.MediaType != desc.MediaType {
			// A converted child (schema 1) is of another type now.
			edits = append(edits, edit{path: []string{"manifests", idx, "mediaType"}, value: quote(next.MediaType)})
		}
		changes = append(changes, Change{Kind: KindChildManifest, Path: "manifests[" + idx + "]", Old: desc.Digest.String(), New: next.Digest.String()})
	}
	return finish(doc, mediaType, edits, changes)
}

// IndexChildren returns the descriptors an index lists, with their platform
// (os, architecture, variant) and the Docker reference type annotation
// when present.
func IndexChildren(mediaType string, index []byte) ([]ocispec.Descriptor, error) {
	if !IsIndex(mediaType) {
		return nil, fmt.Errorf("%w: %s is not an index", ErrNotImage, mediaType)
	}
	doc, err := parseDoc(index)
	if err != nil {
		return nil, err
	}
	n, ok := doc.arrayLen("manifests")
	if !ok {
		return nil, fmt.Errorf("%w: manifests is not an array", ErrNotImage)
	}
	if n > MaxIndexChildren {
		return nil, fmt.Errorf("%w: %d children, more than %d", ErrNotImage, n, MaxIndexChildren)
	}
	out := make([]ocispec.Descriptor, 0, n)
	for i := range n {
		at := []string{"manifests", strconv.Itoa(i)}
		desc, err := descriptorAt(doc, at...)
		if err != nil {
			return nil, err
		}
		field := func(f ...string) (string, bool) { return doc.str(append(slices.Clone(at), f...)...) }
		if os, ok := field("platform", "os"); ok {
			desc.Platform = &ocispec.Platform{OS: os}
			desc.Platform.Architecture, _ = field("platform", "architecture")
			desc.Platform.Variant, _ = field("platform", "variant")
		}
		if ref, ok := field("annotations", AnnotationDockerReferenceType); ok {
			desc.Annotations = map[string]string{AnnotationDockerReferenceType: ref}
		}
		out = append(out, desc)
	}
	return out, nil
}

// AnnotationDockerReferenceType marks an index entry that is no image of its
// own: "attestation-manifest" for buildkit's provenance and SBOMs.
const AnnotationDockerReferenceType = "vnd.docker.reference.type"

// AnnotationDockerReferenceDigest is, on such an entry, the digest of the
// index's child it is about (buildkit: the platform's image manifest).
const AnnotationDockerReferenceDigest = "vnd.docker.reference.digest"

func parseManifest(mediaType string, manifest []byte) (*jsonDoc, error) {
	if !IsManifest(mediaType) {
		return nil, fmt.Errorf("%w: %s", ErrNotImage, mediaType)
	}
	doc, err := parseDoc(manifest)
	if err != nil {
		return nil, err
	}
	if v, ok := doc.int64At("schemaVersion"); !ok || v != 2 {
		return nil, fmt.Errorf("%w: schemaVersion is not 2", ErrNotImage)
	}
	return doc, nil
}

// descriptorAt reads the media type, digest and size of the descriptor at path.
func descriptorAt(doc *jsonDoc, path ...string) (ocispec.Descriptor, error) {
	at := func(field string) []string { return append(append([]string(nil), path...), field) }
	mt, _ := doc.str(at("mediaType")...)
	ds, _ := doc.str(at("digest")...)
	dgst, err := digest.Parse(ds)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%w: descriptor %v has an invalid digest: %v", ErrNotImage, path, err)
	}
	size, ok := doc.int64At(at("size")...)
	if !ok || size < 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%w: descriptor %v has an invalid size", ErrNotImage, path)
	}
	return ocispec.Descriptor{MediaType: mt, Digest: dgst, Size: size}, nil
}

// isImageConfig reports whether config is an image config for a manifest
// with layers layers.
func isImageConfig(doc *jsonDoc, layers int) bool {
	if t, _ := doc.str("rootfs", "type"); t != "layers" {
		return false
	}
	n, ok := doc.arrayLen("rootfs", "diff_ids")
	return ok && n == layers
}

func configMediaTypeFor(manifestMediaType string) string {
	if manifestMediaType == MediaTypeDockerManifest {
		return MediaTypeDockerConfig
	}
	return ocispec.MediaTypeImageConfig
}

// finish applies edits, or returns the input untouched when there are none.
func finish(doc *jsonDoc, mediaType string, edits []edit, changes []Change) (Result, error) {
	if len(edits) == 0 {
		return Result{MediaType: mediaType, Content: doc.raw, Digest: digest.FromBytes(doc.raw)}, nil
	}
	out, err := doc.splice(edits)
	if err != nil {
		return Result{}, err
	}
	return Result{MediaType: mediaType, Content: out, Digest: digest.FromBytes(out), Changes: changes}, nil
}

func quote(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}
