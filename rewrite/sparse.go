package rewrite

import (
	"archive/tar"
	"strings"
)

// KindGNUSparse: a layer was repackaged with its GNU sparse entries (tar
// -S, typeflag 'S') written as regular files, holes filled with zeros.
// containerd's archive code handles no typeflag 'S' ("unhandled tar header
// type 83"), nor does Docker's (docker/cli#6153). Sparse files in the PAX
// format (GNU.sparse.* records on a regular entry) are read expanded by
// archive/tar, containerd's reader too, and need nothing.
const KindGNUSparse = "gnu-sparse"

// maxRecordedExpansions bounds the expanded entries a scan lists; Sparse
// counts all. Their paths share maxRecordedBytes-like bounds of their own.
const maxRecordedExpansions = 100

// isGNUSparse reports whether hdr is an old-format GNU sparse entry, which
// archive/tar reads expanded (hdr.Size is the file's logical size) but
// whose typeflag containerd refuses.
func isGNUSparse(hdr *tar.Header) bool { return hdr.Typeflag == tar.TypeGNUSparse }

// recordSparse notes a GNU sparse entry, which a repackaging writes as a
// regular file.
func (s *LayerScan) recordSparse(path string) {
	s.Sparse++
	if len(s.Expanded) >= maxRecordedExpansions || s.expandedBytes >= maxRecordedBytes {
		return
	}
	p := clip(path, maxRecordedPath)
	if s.expandedBytes+len(p) > maxRecordedBytes {
		s.expandedBytes = maxRecordedBytes // the list ends here
		return
	}
	s.expandedBytes += len(p)
	s.Expanded = append(s.Expanded, p)
}

// expand makes hdr, a GNU sparse entry, the regular file archive/tar
// reads it as: its size is already the logical size and its content comes
// with the holes filled. GNU.sparse.* records, were any left, would make
// a reader look for a sparse map in content that has none.
func expand(hdr *tar.Header) {
	hdr.Typeflag = tar.TypeReg
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			delete(hdr.PAXRecords, k)
		}
	}
}

// describeExpansions renders expanded paths for a report.
func describeExpansions(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, p+": written as a regular file, holes filled")
	}
	return out
}
