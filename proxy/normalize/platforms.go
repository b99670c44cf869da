package normalize

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regnorm/regnorm/rewrite"
)

// Platforms are the children of an index that normalization reads: each
// child read is an upstream manifest GET, which Docker Hub counts against
// the pull rate limit, and a multi-arch index lists a dozen or more.
// Children of other platforms, and attestation manifests, are served as
// the index lists them.
type Platforms struct {
	all  bool
	list []ocispec.Platform
}

// DefaultPlatforms is linux/amd64 and linux/arm64.
func DefaultPlatforms() Platforms {
	p, _ := ParsePlatforms(DefaultPlatformNames())
	return p
}

// DefaultPlatformNames are DefaultPlatforms as ParsePlatforms reads them.
func DefaultPlatformNames() []string { return []string{"linux/amd64", "linux/arm64"} }

// ParsePlatforms reads os/architecture[/variant] entries; "all" reads every
// platform (attestations still not).
func ParsePlatforms(names []string) (Platforms, error) {
	var p Platforms
	for _, n := range names {
		if n == "all" {
			p.all = true
			continue
		}
		parts := strings.Split(n, "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
			return Platforms{}, fmt.Errorf("%q is not a platform such as linux/amd64 or linux/arm/v7, nor all", n)
		}
		pl := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) == 3 {
			pl.Variant = parts[2]
		}
		p.list = append(p.list, pl)
	}
	return p, nil
}

// Key names the platforms in a verdict key, as the rules of a derivation
// attestation of an index end with (proxy/attest): "platforms-" and a hash
// of their canonical list.
func (p Platforms) Key() string { return p.key() }

// key names the platforms in a verdict key: "platforms-" and a hash of
// their canonical list.
func (p Platforms) key() string {
	names := []string{"all"}
	if !p.all {
		names = names[:0]
		for _, pl := range p.list {
			n := pl.OS + "/" + pl.Architecture
			if pl.Variant != "" {
				n += "/" + pl.Variant
			}
			names = append(names, n)
		}
		slices.Sort(names)
		names = slices.Compact(names)
	}
	sum := sha256.Sum256([]byte(strings.Join(names, "\n")))
	return "platforms-" + hex.EncodeToString(sum[:6])
}

// reads reports whether normalization reads child. A child without a
// platform (an index in an index, an artifact) is read: it may be any.
func (p Platforms) reads(child ocispec.Descriptor) bool {
	if _, ok := child.Annotations[rewrite.AnnotationDockerReferenceType]; ok {
		return false
	}
	pl := child.Platform
	switch {
	case pl == nil:
		return true
	case pl.OS == "unknown" && pl.Architecture == "unknown":
		return false // buildkit's attestations
	case p.all:
		return true
	}
	for _, want := range p.list {
		if want.OS == pl.OS && want.Architecture == pl.Architecture && (want.Variant == "" || want.Variant == pl.Variant) {
			return true
		}
	}
	return false
}
