// Package imageref reads an image reference ("redis:2.8.23",
// "ghcr.io/team/app:v1@sha256:…") into the registry, repository, tag and
// digest it names: as warm takes it, and as Kubernetes (containerd's CRI)
// does for a Pod's image. It is pure: the reference grammar of
// distribution/reference and go-digest, nothing else.
package imageref

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
)

// DockerHub is the registry of a reference that names none, as Kubernetes
// and containerd read it.
const DockerHub = "docker.io"

// Image is a parsed image reference.
type Image struct {
	// Registry is the registry's name: a host, or a configured upstream's
	// name; lower case from Parse, as written from Kubernetes.
	Registry string
	// Repository is the path in the registry (library/redis on docker.io
	// for a one-part name).
	Repository string
	// Tag is the tag as written; "latest" when the reference names neither
	// a tag nor a digest.
	Tag string
	// Digest is the digest as written, if any. A reference with both a
	// tag and a digest names the digest (the tag is a comment).
	Digest digest.Digest
}

// LooksLikeHost reports whether the first component of a reference names a
// registry by itself, as docker and Kubernetes decide it: a dot, a port, or
// localhost.
func LooksLikeHost(first string) bool {
	return strings.ContainsAny(first, ".:") || first == "localhost"
}

// Parse reads image. Its first component names the registry when
// isRegistry says so of it (lower-cased); otherwise the name is on
// defaultRegistry. On docker.io a one-part name is an official image
// (library/redis), and index.docker.io is docker.io.
func Parse(image, defaultRegistry string, isRegistry func(first string) bool) (Image, error) {
	return parse(image, defaultRegistry, isRegistry, strings.ToLower)
}

// parse is Parse with the registry's first component read through host
// (lower-cased, or as written).
func parse(image, defaultRegistry string, isRegistry func(first string) bool, host func(string) string) (Image, error) {
	registry, rest := defaultRegistry, image
	if first, after, ok := strings.Cut(image, "/"); ok {
		if name := host(first); isRegistry(name) {
			registry, rest = name, after
		}
	}
	if registry == "index.docker.io" {
		registry = DockerHub
	}
	// The path, tag and digest are checked by the reference grammar, on a
	// stand-in registry: upstream names need not look like hosts.
	named, err := reference.ParseNamed("registry.invalid/" + rest)
	if err != nil {
		return Image{}, fmt.Errorf("%q is not an image reference: %w", image, err)
	}
	img := Image{Registry: registry, Repository: reference.Path(named), Tag: "latest"}
	if img.Registry == DockerHub && !strings.Contains(img.Repository, "/") {
		img.Repository = "library/" + img.Repository
	}
	tagged, hasTag := named.(reference.Tagged)
	if hasTag {
		img.Tag = tagged.Tag()
	}
	if ref, ok := named.(reference.Canonical); ok {
		img.Digest = ref.Digest()
		if !hasTag {
			img.Tag = ""
		}
	}
	return img, nil
}

// Kubernetes reads image as containerd's CRI does for a Pod
// (distribution/reference's ParseNormalizedNamed): a registry only by a
// first component that looks like a host or has an upper-case letter, else
// docker.io; and the registry as written, since containerd picks a
// registry's configuration (certs.d/<host>/hosts.toml, so whether it pulls
// through regnorm) by the host as written: GHCR.io is not ghcr.io there.
// index.docker.io, as written, is docker.io.
func Kubernetes(image string) (Image, error) {
	return parse(image, DockerHub, func(first string) bool {
		return LooksLikeHost(first) || strings.ToLower(first) != first
	}, func(first string) string { return first })
}

// WithDigest is image, as written, naming dgst in place of the digest it
// names (a reference with a tag keeps it): what the webhook writes. image
// must name a digest.
func WithDigest(image string, dgst digest.Digest) string {
	at := strings.LastIndex(image, "@")
	if at < 0 {
		return image + "@" + dgst.String()
	}
	return image[:at+1] + dgst.String()
}
