//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/regnorm/regnorm/internal/regtest"
)

// pushXattrImage pushes the hello image plus a layer like the one in
// quay.io/ansible/creator-ee v0.5.0: a symlink carrying a user.* xattr.
func pushXattrImage(t *testing.T, registryURL, repo, tag string, opts regtest.ImageOptions) regtest.Image {
	t.Helper()
	return pushHelloWith(t, registryURL, repo, tag, opts, []regtest.File{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/krb5.conf.d/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/crypto-policies.conf", Content: []byte("DEFAULT\n")},
		{Name: "etc/krb5.conf.d/crypto-policies", Typeflag: tar.TypeSymlink, Linkname: "/etc/crypto-policies.conf",
			PAXRecords: map[string]string{"SCHILY.xattr.user.rpm.origin": repo}},
	})
}

// TestSymlinkXattrImages: containerd v1.6.8 fails on a layer with a user.*
// xattr on a symlink; through regnorm it pulls and runs the image, also one
// that has both problems (warmed with the `warm` command first, for the
// fleet's versions). Debian's 1.6.20 and containerd 2.3.4 (which unpack such
// layers, and 2.3.4 through the transfer service) get the xattr image as
// the upstream has it, byte for byte, and the octet-stream one with only its
// config fixed; the report lists both variants of each.
func TestSymlinkXattrImages(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	xattr := pushXattrImage(t, registryURL, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{})
	both := pushXattrImage(t, registryURL, "library/both", "v1", legacyConfig)
	proxyURL, _ := startRegnorm(t, registryURL, "")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, regnormBin, "warm", "--server", proxyURL, "--clients", "1.6.8,1.6.20", "docker.io/library/both:v1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "containerd 1.6.8: normalized "+both.ManifestDigest.String()) ||
		!strings.Contains(string(out), "containerd 1.6.20: normalized "+both.ManifestDigest.String()) {
		t.Fatalf("regnorm warm: %v\n%s", err, out)
	}

	for _, tt := range []struct {
		name, repo string
		original   string
		// The octet-stream failure comes first: the layers are never fetched.
		directErr string
		// Whether nodes with the xattr fix get the original.
		originalForFixed bool
	}{
		{"symlink xattr", "ansible/creator-ee:v0.5.0", xattr.ManifestDigest.String(), "operation not permitted", true},
		{"symlink xattr and octet-stream config", "library/both:v1", both.ManifestDigest.String(), "not found", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The failing direct pull on a node of its own: what it leaves
			// behind (a base layer's snapshot that containerd's garbage
			// collector takes away under the next pull) must not meet the pull
			// through regnorm.
			probe := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
			_, err := probe.pull(t, registryHost+"/"+tt.repo)
			if err == nil || !strings.Contains(err.Error(), "failed to extract layer") || !strings.Contains(err.Error(), tt.directErr) {
				t.Fatalf("direct pull on containerd 1.6.8: got %v, want 'failed to extract layer ... %s'", err, tt.directErr)
			}
			ref := "docker.io/" + tt.repo
			old := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
			if _, err := old.pull(t, ref); err != nil {
				t.Fatalf("containerd 1.6.8 through regnorm: %v", err)
			}
			if got := old.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			fixed := old.repoDigest(t, ref)
			if fixed == tt.original {
				t.Fatal("pulled under the original digest")
			}

			// Versions with the xattr fix get the variant of their rules.
			for _, kind := range []containerdKind{containerd1620, containerd234} {
				node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL})
				if _, err := node.pull(t, ref); err != nil {
					t.Fatalf("containerd %s through regnorm: %v", kind.name, err)
				}
				if got := node.run(t, ref); got != "hello from regnorm e2e" {
					t.Fatalf("container printed %q on %s", got, kind.name)
				}
				got := node.repoDigest(t, ref)
				switch {
				case tt.originalForFixed && got != tt.original:
					t.Fatalf("containerd %s got %s, want the upstream's %s", kind.name, got, tt.original)
				case !tt.originalForFixed && (got == tt.original || got == fixed):
					t.Fatalf("containerd %s got %s: want the config-only variant (original %s, 1.6.8's %s)", kind.name, got, tt.original, fixed)
				}
			}
		})
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="symlink-xattrs"`); n != 2 {
		t.Fatalf("symlink-xattrs rewrites = %v, want 2", n)
	}

	// The report: two variants of each image, and which nodes got which
	// (the original's variant is recorded beside the answer: poll briefly).
	// Each variant is named by the rules that apply to the image: of
	// 1.6.20's and 2.3.4's, only the diff IDs rule (which finds nothing to
	// mend) applies to the xattr image.
	want := map[string]string{
		xattr.ManifestDigest.String() + " symlink-xattrs,diff-ids":                  "1.6.8",
		xattr.ManifestDigest.String() + " diff-ids":                                 "1.6.20,2.3.4 (original)",
		both.ManifestDigest.String() + " config-media-type,symlink-xattrs,diff-ids": "1.6.8",
		both.ManifestDigest.String() + " config-media-type,diff-ids":                "1.6.20,2.3.4",
	}
	var got map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got = variantReport(t, proxyURL)
		if maps.Equal(got, want) || time.Now().After(deadline) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("report variants (original rules -> clients):\n got %v\nwant %v", got, want)
	}
}

// variantReport reads the report as "original rules" -> "clients" (and
// " (original)" for a variant that is the original itself).
func variantReport(t *testing.T, proxyURL string) map[string]string {
	t.Helper()
	resp, err := http.Get(proxyURL + "/api/v1/rewrites")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var report struct {
		Rewrites []struct {
			OriginalDigest   string   `json:"originalDigest"`
			NormalizedDigest string   `json:"normalizedDigest"`
			Rules            string   `json:"rules"`
			Clients          []string `json:"clients"`
		} `json:"rewrites"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&report); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range report.Rewrites {
		unchanged := ""
		if e.NormalizedDigest == "" {
			unchanged = " (original)"
		}
		got[e.OriginalDigest+" "+e.Rules] = strings.Join(e.Clients, ",") + unchanged
	}
	return got
}

// TestSymlinkXattrEveryLayerType: containerd 1.6.8 fails on an xattr on a
// symlink in every layer type it unpacks, not only Docker's gzip type (see
// TestSymlinkXattrImages); through regnorm it pulls and runs each.
func TestSymlinkXattrEveryLayerType(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	proxyURL, _ := startRegnorm(t, registryURL, "")
	probe := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
	for i, mediaType := range []string{
		"application/vnd.docker.image.rootfs.diff.tar",
		"application/vnd.oci.image.layer.v1.tar",
		"application/vnd.oci.image.layer.v1.tar+gzip",
		"application/vnd.oci.image.layer.v1.tar+zstd",
	} {
		t.Run(mediaType, func(t *testing.T) {
			repo := fmt.Sprintf("types/t%d:v1", i)
			img := pushXattrImage(t, registryURL, strings.TrimSuffix(repo, ":v1"), "v1", regtest.ImageOptions{LayerMediaType: mediaType})
			if _, err := probe.pull(t, registryHost+"/"+repo); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
				t.Fatalf("direct pull on containerd 1.6.8: got %v, want 'operation not permitted'", err)
			}
			ref := "docker.io/" + repo
			old := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost) // not the probe's: see TestSymlinkXattrImages
			if _, err := old.pull(t, ref); err != nil {
				t.Fatalf("containerd 1.6.8 through regnorm: %v", err)
			}
			if got := old.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if got := old.repoDigest(t, ref); got == img.ManifestDigest.String() {
				t.Fatal("pulled under the original digest")
			}
		})
	}
}
