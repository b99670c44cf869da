package cosign_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBytesInVerdictsOut keeps cosign's formats a matter of bytes: no
// network, no files, no other regnorm package. Its callers (regnorm
// verify, the attestations) fetch and store.
func TestBytesInVerdictsOut(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files: %v", err)
	}
	denied := map[string]bool{"net/http": true, "net": true, "os": true}
	for _, file := range files {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			switch {
			case strings.HasSuffix(file, "_test.go"):
			case denied[path]:
				t.Errorf("%s imports %s", file, path)
			case strings.HasPrefix(path, "github.com/regnorm/regnorm/"):
				t.Errorf("%s imports %s: cosign's formats need no other regnorm package", file, path)
			}
		}
	}
}
