package imageref

import (
	"testing"

	digest "github.com/opencontainers/go-digest"
)

const d = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// TestKubernetes: a Pod's image reads as Kubernetes reads it: docker.io
// when the first component is no host, library/ for a one-part name on
// it, the tag kept beside a digest.
func TestKubernetes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		image string
		want  Image
	}{
		{"redis", Image{"docker.io", "library/redis", "latest", ""}},
		{"redis:7", Image{"docker.io", "library/redis", "7", ""}},
		{"redis@" + d, Image{"docker.io", "library/redis", "", d}},
		{"redis:7@" + d, Image{"docker.io", "library/redis", "7", d}},
		{"team/app@" + d, Image{"docker.io", "team/app", "", d}},
		{"docker.io/app@" + d, Image{"docker.io", "library/app", "", d}},
		{"index.docker.io/app@" + d, Image{"docker.io", "library/app", "", d}},
		{"ghcr.io/team/app:v1@" + d, Image{"ghcr.io", "team/app", "v1", d}},
		{"localhost:5000/app@" + d, Image{"localhost:5000", "app", "", d}},
		{"localhost/app", Image{"localhost", "app", "latest", ""}},
		// The host as written: containerd does not fold its case.
		{"GHCR.io/team/app", Image{"GHCR.io", "team/app", "latest", ""}},
		{"INDEX.docker.io/app@" + d, Image{"INDEX.docker.io", "app", "", d}},
		{"Registry/app@" + d, Image{"Registry", "app", "", d}},
	} {
		got, err := Kubernetes(tt.image)
		if err != nil || got != tt.want {
			t.Errorf("Kubernetes(%q) = %+v, %v; want %+v", tt.image, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "Team/App", "app@sha256:short", "a//b", "app:"} {
		if got, err := Kubernetes(bad); err == nil {
			t.Errorf("Kubernetes(%q) = %+v, want an error", bad, got)
		}
	}
}

// TestWithDigest keeps the reference as written but for its digest.
func TestWithDigest(t *testing.T) {
	t.Parallel()
	b := digest.Digest("sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	for image, want := range map[string]string{
		"redis@" + d:                 "redis@" + b.String(),
		"ghcr.io/team/app:v1@" + d:   "ghcr.io/team/app:v1@" + b.String(),
		"localhost:5000/app:v1@" + d: "localhost:5000/app:v1@" + b.String(),
	} {
		if got := WithDigest(image, b); got != want {
			t.Errorf("WithDigest(%q) = %q, want %q", image, got, want)
		}
	}
}
