package rewrite

import (
	"archive/tar"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// KindSymlinkXattrs: a layer was repackaged without the xattrs the kernel
// refuses on symlinks and other special files.
const KindSymlinkXattrs = "symlink-xattrs"

// XattrRemoval is the xattr keys removed from one tar entry, as recorded:
// a path or key longer than the record keeps ends in "…", and MoreKeys
// counts the keys beyond those listed.
type XattrRemoval struct {
	Path     string   `json:"path"`
	Keys     []string `json:"keys"`
	MoreKeys int      `json:"moreKeys,omitempty"`
}

// What a scan lists of the entries it strips. Paths, keys and their number
// come from the layer (tar allows paths and PAX records of a megabyte), and
// the list goes into records, reports and pages: each is bounded, in bytes
// and in number, so that a layer's size is never a record's. Only what is
// listed is cut; what the layer becomes is not.
const (
	// maxRecordedRemovals bounds the entries listed; Stripped counts all.
	maxRecordedRemovals = 100
	// maxRecordedBytes bounds the paths and keys listed, together.
	maxRecordedBytes = 16 << 10
	// maxRecordedPath and maxRecordedKey bound one path and one key.
	maxRecordedPath = 256
	maxRecordedKey  = 128
	// maxRecordedKeys bounds the keys listed for one entry.
	maxRecordedKeys = 8
)

// record notes an entry whose xattrs keys the rule removes.
func (s *LayerScan) record(path string, keys []string) {
	if len(keys) == 0 {
		return
	}
	s.Stripped++
	if len(s.Removals) >= maxRecordedRemovals {
		return
	}
	r := XattrRemoval{Path: clip(path, maxRecordedPath), MoreKeys: max(0, len(keys)-maxRecordedKeys)}
	size := len(r.Path)
	for _, k := range keys[:len(keys)-r.MoreKeys] {
		k = clip(k, maxRecordedKey)
		r.Keys = append(r.Keys, k)
		size += len(k)
	}
	if s.removalBytes+size > maxRecordedBytes {
		s.removalBytes = maxRecordedBytes // the list ends here
		return
	}
	s.removalBytes += size
	s.Removals = append(s.Removals, r)
}

// clipMark ends a recorded string that was cut.
const clipMark = "…"

// clip cuts s to at most n bytes (n > len(clipMark)), at a rune boundary
// where s is UTF-8, ending it in clipMark when it cut: the same s always
// gives the same result. The result is always a copy: archive/tar's names
// and keys are slices of the entry's whole PAX header (up to a megabyte),
// which a record must not keep alive.
func clip(s string, n int) string {
	if len(s) <= n {
		return strings.Clone(s)
	}
	cut := n - len(clipMark)
	for i := cut; i > cut-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			cut = i
			break
		}
	}
	return s[:cut] + clipMark
}

// strippableXattrs returns the xattr records of hdr that the rule removes:
// all of them on an entry that is not a regular file, hard link or
// directory. Sorted, so reports are deterministic.
func strippableXattrs(hdr *tar.Header) []string {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeLink, tar.TypeDir, tar.TypeGNUSparse, tar.TypeXGlobalHeader: //nolint:staticcheck // TypeRegA still appears in old layers
		return nil
	}
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") || strings.HasPrefix(k, "LIBARCHIVE.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// describeRemovals renders removals for a report: "path: key, key".
func describeRemovals(rs []XattrRemoval) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		line := r.Path + ": " + strings.Join(r.Keys, ", ")
		if r.MoreKeys > 0 {
			line += fmt.Sprintf(" and %d more", r.MoreKeys)
		}
		out = append(out, line)
	}
	return out
}
