//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
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
// that has both problems (warmed with the `warm` command first), and
// Debian's 1.6.20 and containerd 2.3.4 (which has the fix, and pulls through
// the transfer service) pull and run the normalized images as well.
func TestSymlinkXattrImages(t *testing.T) {
	registryURL, _ := startRegistry(t)
	registryHost := strings.TrimPrefix(registryURL, "http://")
	xattr := pushXattrImage(t, registryURL, "ansible/creator-ee", "v0.5.0", regtest.ImageOptions{})
	both := pushXattrImage(t, registryURL, "library/both", "v1", legacyConfig)
	proxyURL, _ := startRegnorm(t, registryURL, "")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, regnormBin, "warm", "--server", proxyURL, "docker.io/library/both:v1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "normalized "+both.ManifestDigest.String()) {
		t.Fatalf("regnorm warm: %v\n%s", err, out)
	}

	for _, tt := range []struct {
		name, repo string
		original   string
		// The octet-stream failure comes first: the layers are never fetched.
		directErr string
	}{
		{"symlink xattr", "ansible/creator-ee:v0.5.0", xattr.ManifestDigest.String(), "operation not permitted"},
		{"symlink xattr and octet-stream config", "library/both:v1", both.ManifestDigest.String(), "not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old := startContainerdBin(t, oldContainerdBin, proxyURL, registryHost)
			_, err := old.pull(t, registryHost+"/"+tt.repo)
			if err == nil || !strings.Contains(err.Error(), "failed to extract layer") || !strings.Contains(err.Error(), tt.directErr) {
				t.Fatalf("direct pull on containerd 1.6.8: got %v, want 'failed to extract layer ... %s'", err, tt.directErr)
			}
			ref := "docker.io/" + tt.repo
			if _, err := old.pull(t, ref); err != nil {
				t.Fatalf("containerd 1.6.8 through regnorm: %v", err)
			}
			if got := old.run(t, ref); got != "hello from regnorm e2e" {
				t.Fatalf("container printed %q", got)
			}
			if got := old.repoDigest(t, ref); got == tt.original {
				t.Fatal("pulled under the original digest")
			}

			// Versions with the fix pull the normalized image as well.
			for _, kind := range []containerdKind{containerd1620, containerd234} {
				node := startContainerdVersion(t, kind, containerdOptions{Mirror: proxyURL})
				if _, err := node.pull(t, ref); err != nil {
					t.Fatalf("containerd %s through regnorm: %v", kind.name, err)
				}
				if got := node.run(t, ref); got != "hello from regnorm e2e" {
					t.Fatalf("container printed %q on %s", got, kind.name)
				}
			}
		})
	}
	if n := metric(t, proxyURL, "regnorm_rewrites_total", `kind="symlink-xattrs"`); n != 2 {
		t.Fatalf("symlink-xattrs rewrites = %v, want 2", n)
	}
}
