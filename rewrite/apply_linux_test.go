//go:build linux

package rewrite

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"
)

// TestRepackedLayerExtractsTheSame extracts an original layer and its
// repackaged form with containerd's own archive.Apply (v2.4.2, pinned in
// go.mod; it tolerates the EPERM that older versions abort on) and compares
// the trees: identical except for the removed xattrs. It needs root (device
// nodes, ownership, xattrs); scripts/test.sh sets REGNORM_REQUIRE_ALL, so
// there it fails rather than skips.
func TestRepackedLayerExtractsTheSame(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("REGNORM_REQUIRE_ALL") != "" {
			t.Fatal("needs root")
		}
		t.Skip("needs root: extracts device nodes, ownership and xattrs")
	}
	var entries []entry
	for _, c := range layerCases {
		entries = append(entries, c.entries...)
	}
	// Distinct names per case would collide; keep the first of each name.
	seen := map[string]bool{}
	var uniq []entry
	for _, e := range entries {
		if !seen[e.hdr.Name] {
			seen[e.hdr.Name] = true
			uniq = append(uniq, e)
		}
	}
	raw := buildTar(t, uniq, tar.FormatPAX)
	var out bytes.Buffer
	res, err := RepackLayer(&out, bytes.NewReader(raw), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Clean() {
		t.Fatal("the test layer has nothing to strip")
	}

	before, after := t.TempDir(), t.TempDir()
	if _, err := archive.Apply(context.Background(), before, bytes.NewReader(raw)); err != nil {
		t.Fatalf("apply original: %v", err)
	}
	if _, err := archive.Apply(context.Background(), after, bytes.NewReader(decompress(t, out.Bytes()))); err != nil {
		t.Fatalf("apply repackaged: %v", err)
	}
	removed := map[string]map[string]bool{}
	for _, r := range res.Removals {
		removed[r.Path] = map[string]bool{}
		for _, k := range r.Keys {
			removed[r.Path][strings.TrimPrefix(strings.TrimPrefix(k, "SCHILY.xattr."), "LIBARCHIVE.xattr.")] = true
		}
	}
	// A directory the layer does not hold is made by the extraction, with
	// the time of the extraction: only the layer's own entries have a time
	// to compare.
	inLayer := map[string]bool{}
	for _, e := range uniq {
		inLayer[strings.TrimSuffix(filepath.Clean(e.hdr.Name), "/")] = true
	}
	var kept, keptAfter int
	a, b := describeTree(t, before, removed, inLayer, &kept), describeTree(t, after, nil, inLayer, &keptAfter)
	if kept == 0 || keptAfter != kept {
		t.Fatalf("xattrs compared: %d in the original tree, %d in the repackaged one; the layer has some to keep", kept, keptAfter)
	}
	if !maps.Equal(a, b) {
		for k := range a {
			if a[k] != b[k] {
				t.Errorf("%s:\n original   %s\n repackaged %s", k, a[k], b[k])
			}
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				t.Errorf("%s only in the repackaged tree", k)
			}
		}
	}
	if len(a) < 10 {
		t.Fatalf("only %d paths extracted", len(a))
	}
	timed := 0
	for _, d := range a {
		if strings.Contains(d, " mtime ") {
			timed++
		}
	}
	if timed < len(inLayer)/2 {
		t.Fatalf("times compared for %d paths of the layer's %d", timed, len(inLayer))
	}
}

// describeTree renders every path under root: type, mode, owner, time (of
// the paths timed holds), device, link target, content hash and xattrs
// (less those in drop).
func describeTree(t *testing.T, root string, drop map[string]map[string]bool, timed map[string]bool, xattrs *int) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode %o uid %d gid %d rdev %d", st.Mode, st.Uid, st.Gid, st.Rdev)
		if timed[rel] {
			desc += fmt.Sprintf(" mtime %d", st.Mtim.Sec)
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256 %x nlink %d", sha256.Sum256(b), st.Nlink)
		}
		// A filesystem without user xattrs would make every tree look
		// alike: an error here fails the test.
		names := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, names)
		if err != nil {
			return fmt.Errorf("list xattrs of %s: %w", rel, err)
		}
		var xs []string
		for _, name := range strings.Split(string(names[:n]), "\x00") {
			if name == "" {
				continue
			}
			if drop[rel] != nil && drop[rel][name] {
				continue
			}
			val := make([]byte, 64<<10)
			vn, err := unix.Lgetxattr(p, name, val)
			if err != nil {
				return fmt.Errorf("read xattr %s of %s: %w", name, rel, err)
			}
			xs = append(xs, name+"="+string(val[:vn]))
			*xattrs++
		}
		slices.Sort(xs) // containerd sets them in map order
		out[rel] = desc + " xattrs " + strings.Join(xs, ",")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
