package rewrite

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/internal/schema1"
)

// KindSchema1: a schema 1 manifest was converted to a Docker schema 2
// manifest and config.
const KindSchema1 = "schema1"

// ErrBadSchema1 means a schema 1 manifest is malformed: its signatures do
// not frame a payload, or its layers and history do not pair up.
var ErrBadSchema1 = schema1.ErrMalformed

// rfc3339 is a JSON string holding a time as Docker wrote them, and as
// containerd and containers/image read them (time.RFC3339Nano): the fields
// in range (rewrite has no time package, which would bring clocks).
var rfc3339 = regexp.MustCompile(`^"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"$`)

// isTime reports whether created (JSON) is a time Go's reader accepts:
// RFC 3339, its fields in range, the day within its month.
func isTime(created []byte) bool {
	m := rfc3339.FindSubmatch(created)
	if m == nil {
		return false
	}
	year, _ := strconv.Atoi(string(m[1]))
	month, _ := strconv.Atoi(string(m[2]))
	day, _ := strconv.Atoi(string(m[3]))
	days := [13]int{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
		days[2] = 29
	}
	return day <= days[month]
}

// schema1Manifest is the part of a schema 1 manifest conversion reads.
type schema1Manifest struct {
	SchemaVersion int `json:"schemaVersion"`
	FSLayers      []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers"`
	History []struct {
		V1Compatibility string `json:"v1Compatibility"`
	} `json:"history"`
}

// v1Compatibility is the part of a history entry conversion reads.
type v1Compatibility struct {
	Created         json.RawMessage `json:"created,omitempty"`
	Author          string          `json:"author,omitempty"`
	Comment         string          `json:"comment,omitempty"`
	ThrowAway       bool            `json:"throwaway,omitempty"`
	ContainerConfig struct {
		Cmd []string `json:"Cmd"`
	} `json:"container_config"`
}

// Schema1Layer is one layer of a schema 1 image: its blob, oldest first.
type Schema1Layer struct {
	Digest digest.Digest
	// Throwaway layers (empty, marked so by Docker) are not layers of the
	// converted image, and are never read.
	Throwaway bool
	v1        v1Compatibility
}

// PlanSchema1 reads a schema 1 manifest's layers, oldest first (schema 1
// lists them newest first), so that the caller can read the blobs that
// conversion needs: every layer that is not a throwaway.
func PlanSchema1(manifest []byte) ([]Schema1Layer, error) {
	payload, err := schema1.Payload(manifest)
	if err != nil {
		return nil, err
	}
	var m schema1Manifest
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSchema1, err)
	}
	switch {
	case m.SchemaVersion != 1:
		return nil, fmt.Errorf("%w: schemaVersion %d", ErrBadSchema1, m.SchemaVersion)
	case len(m.FSLayers) == 0 || len(m.FSLayers) != len(m.History):
		return nil, fmt.Errorf("%w: %d fsLayers and %d history entries", ErrBadSchema1, len(m.FSLayers), len(m.History))
	case len(m.FSLayers) > MaxLayers:
		return nil, fmt.Errorf("%w: %d layers, more than %d", ErrBadSchema1, len(m.FSLayers), MaxLayers)
	}
	layers := make([]Schema1Layer, len(m.FSLayers))
	for i := range m.FSLayers {
		j := len(m.FSLayers) - 1 - i
		if err := m.FSLayers[j].BlobSum.Validate(); err != nil {
			return nil, fmt.Errorf("%w: fsLayers[%d]: %v", ErrBadSchema1, j, err)
		}
		var v1 v1Compatibility
		if err := json.Unmarshal([]byte(m.History[j].V1Compatibility), &v1); err != nil {
			return nil, fmt.Errorf("%w: history[%d]: %v", ErrBadSchema1, j, err)
		}
		// Passed through to the config: it must read as a time there.
		if v1.Created != nil && !isTime(v1.Created) {
			return nil, fmt.Errorf("%w: history[%d]: created %.40s is not an RFC 3339 time", ErrBadSchema1, j, v1.Created)
		}
		layers[i] = Schema1Layer{Digest: m.FSLayers[j].BlobSum, Throwaway: v1.ThrowAway, v1: v1}
	}
	return layers, nil
}

// Schema1Blob is what conversion needs of a layer blob: its size and diff
// ID (the digest of its decompressed tar), and its compression.
type Schema1Blob struct {
	Size        int64
	DiffID      digest.Digest
	Compression Compression
}

// schema1Dropped are the v1 bookkeeping fields of a v1Compatibility that an
// image config does not have.
var schema1Dropped = []string{"id", "parent", "parent_id", "layer_id", "throwaway", "Size"}

// ConvertSchema1 converts a schema 1 manifest to a Docker schema 2 manifest
// and image config, as containerd 1.x and containers/image do: layers and
// history oldest first, throwaway layers dropped from the layers (kept in
// the history, as empty layers), the config made of the newest
// v1Compatibility without the v1 bookkeeping fields, plus history and
// rootfs (blobs gives each layer's diff ID). Nothing depends on a clock or
// on map order: the same manifest and blobs give the same bytes.
func ConvertSchema1(mediaType string, manifest []byte, blobs map[digest.Digest]Schema1Blob) (Result, error) {
	if !schema1.Is(mediaType) {
		return Result{}, fmt.Errorf("%w: %s is not schema 1", ErrNotImage, mediaType)
	}
	layers, err := PlanSchema1(manifest)
	if err != nil {
		return Result{}, err
	}
	payload, _ := schema1.Payload(manifest) // PlanSchema1 checked it
	var m schema1Manifest
	json.Unmarshal(payload, &m) //nolint:errcheck // PlanSchema1 parsed it

	config := map[string]json.RawMessage{}
	if err := json.Unmarshal([]byte(m.History[0].V1Compatibility), &config); err != nil {
		return Result{}, fmt.Errorf("%w: history[0]: %v", ErrBadSchema1, err)
	}
	for _, k := range schema1Dropped {
		delete(config, k)
	}
	type historyEntry struct {
		Created    json.RawMessage `json:"created,omitempty"`
		Author     string          `json:"author,omitempty"`
		CreatedBy  string          `json:"created_by,omitempty"`
		Comment    string          `json:"comment,omitempty"`
		EmptyLayer bool            `json:"empty_layer,omitempty"`
	}
	history := make([]historyEntry, 0, len(layers))
	diffIDs := []digest.Digest{}
	descs := []ocispec.Descriptor{}
	for _, l := range layers {
		history = append(history, historyEntry{Created: l.v1.Created, Author: l.v1.Author, Comment: l.v1.Comment,
			CreatedBy: strings.Join(l.v1.ContainerConfig.Cmd, " "), EmptyLayer: l.Throwaway})
		if l.Throwaway {
			continue
		}
		b, ok := blobs[l.Digest]
		if !ok || b.DiffID == "" || b.Size <= 0 {
			return Result{}, fmt.Errorf("convert schema 1: no size and diff ID for layer %s", l.Digest)
		}
		mt := MediaTypeDockerLayerGzip
		switch b.Compression {
		case Gzip:
		case Uncompressed:
			mt = MediaTypeDockerLayer
		default:
			return Result{}, fmt.Errorf("%w: layer %s is %s-compressed, which schema 1 never was", ErrBadSchema1, l.Digest, b.Compression)
		}
		diffIDs = append(diffIDs, b.DiffID)
		descs = append(descs, ocispec.Descriptor{MediaType: mt, Digest: l.Digest, Size: b.Size})
	}
	if config["history"], err = json.Marshal(history); err != nil {
		return Result{}, err
	}
	if config["rootfs"], err = json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}); err != nil {
		return Result{}, err
	}
	configBytes, err := json.Marshal(config) // keys sorted: deterministic
	if err != nil {
		return Result{}, fmt.Errorf("convert schema 1: config: %w", err)
	}
	configDesc := ocispec.Descriptor{MediaType: MediaTypeDockerConfig, Digest: digest.FromBytes(configBytes), Size: int64(len(configBytes))}

	type descriptor struct {
		MediaType string        `json:"mediaType"`
		Size      int64         `json:"size"`
		Digest    digest.Digest `json:"digest"`
	}
	out := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{SchemaVersion: 2, MediaType: MediaTypeDockerManifest,
		Config: descriptor{configDesc.MediaType, configDesc.Size, configDesc.Digest}, Layers: []descriptor{}}
	for _, d := range descs {
		out.Layers = append(out.Layers, descriptor{d.MediaType, d.Size, d.Digest})
	}
	content, err := json.MarshalIndent(out, "", "   ")
	if err != nil {
		return Result{}, err
	}
	return Result{
		MediaType: MediaTypeDockerManifest, Content: content, Digest: digest.FromBytes(content),
		Changes: []Change{{Kind: KindSchema1, Path: "mediaType", Old: mediaType, New: MediaTypeDockerManifest}},
		Config:  configBytes, ConfigDesc: configDesc,
	}, nil
}

// LayerDiffID reads a layer blob (gzip, zstd or plain tar) to its end and
// returns its diff ID: the digest of the decompressed stream, as containerd
// computes it. A layer beyond lim is ErrLayerTooLarge or ErrZstdWindow; a
// source error is returned as it is, never taken for the end of the layer.
func LayerDiffID(blob io.Reader, lim Limits) (digest.Digest, Compression, error) {
	l, err := openLayer(blob, lim)
	if err != nil {
		return "", "", err
	}
	defer l.close()
	h := sha256.New()
	if _, err := io.Copy(h, l.rest); err != nil {
		return "", "", l.fail(fmt.Errorf("%w: %v", ErrNotTar, err))
	}
	l.src.drain()
	if l.src.err != nil {
		return "", "", l.src.cause(nil)
	}
	return digest.NewDigest(digest.SHA256, h), l.comp, nil
}
