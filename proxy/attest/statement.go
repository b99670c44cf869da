package attest

import (
	"bytes"
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"
)

// PredicateType is the type of regnorm's derivation predicate
// (docs/signatures.md).
const PredicateType = "https://regnorm.dev/attestations/derivation/v1"

// StatementType is the in-toto Statement v1 type.
const StatementType = "https://in-toto.io/Statement/v1"

// Derivation is what a variant was made from and how: the input of the
// statement.
type Derivation struct {
	// Repository is the repository as clients name it, e.g. library/redis:
	// the subject's name.
	Repository string
	// Upstream is the upstream's name, as configured.
	Upstream string
	// Variant is the manifest or index clients get.
	Variant Object
	// Original is the upstream's manifest or index it was made from.
	Original Object
	// Rules is the key of the rule set the variant was made under.
	Rules string
	// Changes are what changed, as the rewrite report records them.
	Changes []Change
	// UnlistedChanges counts the changes beyond Changes.
	UnlistedChanges int
	// Version is regnorm's version (its build info).
	Version string
	// Limits are the limits a layer was left untouched under (the
	// verdict's Limited): a re-derivation under them makes the same
	// variant. Zero when none was.
	Limits Limits
}

// Limits are the layer limits a variant was made under, where they left a
// layer untouched: the largest decompressed layer and zstd window read.
// Fields in sorted order; zero values are left out.
type Limits struct {
	LayerSize  int64 `json:"layerSize,omitempty"`
	ZstdWindow int64 `json:"zstdWindow,omitempty"`
}

// Object is a manifest or index: its digest and media type.
type Object struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
}

// Change is one change the rules made: what (Kind), where (Path), from
// what to what (Old, New: a blob's or child manifest's digests when one
// was rewritten, else the field's values), with the report's details.
// Fields in sorted order: the encoding is part of the digest.
type Change struct {
	Details  []string `json:"details,omitempty"`
	Kind     string   `json:"kind"`
	New      string   `json:"new"`
	Old      string   `json:"old"`
	Path     string   `json:"path"`
	Unlisted int      `json:"unlisted,omitempty"`
}

// Predicate is the derivation predicate, as encoded (docs/signatures.md).
// Fields in sorted order.
type Predicate struct {
	Changes         []Change `json:"changes"`
	Limits          *Limits  `json:"limits,omitempty"`
	Original        Object   `json:"original"`
	Regnorm         Build    `json:"regnorm"`
	Repository      string   `json:"repository"`
	Rules           string   `json:"rules"`
	UnlistedChanges int      `json:"unlistedChanges,omitempty"`
	Upstream        string   `json:"upstream"`
}

// Build is the regnorm that made the variant.
type Build struct {
	Version string `json:"version"`
}

// Subject is an in-toto resource descriptor: a name and digests.
type Subject struct {
	Digest map[string]string `json:"digest"`
	Name   string            `json:"name"`
}

// Statement is an in-toto Statement v1 with the derivation predicate, as
// encoded: its keys sorted (_type sorts first).
type Statement struct {
	Type          string    `json:"_type"`
	Predicate     Predicate `json:"predicate"`
	PredicateType string    `json:"predicateType"`
	Subject       []Subject `json:"subject"`
}

// NewStatement is the statement of d, encoded: the same d always makes
// the same bytes (sorted keys, no time, no HTML escapes, no trailing
// newline).
func NewStatement(d Derivation) ([]byte, error) {
	if err := d.Variant.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("variant digest: %w", err)
	}
	if d.Variant.Digest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("variant digest %s: not sha256", d.Variant.Digest)
	}
	if err := d.Original.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("original digest: %w", err)
	}
	changes := d.Changes
	if changes == nil {
		changes = []Change{}
	}
	var limits *Limits
	if d.Limits != (Limits{}) {
		limits = &d.Limits
	}
	st := Statement{
		Type: StatementType,
		Predicate: Predicate{Changes: changes, Limits: limits, Original: d.Original, Regnorm: Build{Version: d.Version},
			Repository: d.Repository, Rules: d.Rules, UnlistedChanges: d.UnlistedChanges, Upstream: d.Upstream},
		PredicateType: PredicateType,
		Subject:       []Subject{{Name: d.Repository, Digest: map[string]string{"sha256": d.Variant.Digest.Encoded()}}},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(st); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
