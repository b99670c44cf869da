package blobfetch

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestFetcherStaysApart keeps the download fan-out to its job: it reads
// upstream through proxy/upstream and writes the cache through Store;
// whether a client may read a blob is decided in proxy/, which imports it.
func TestFetcherStaysApart(t *testing.T) {
	t.Parallel()
	denied := map[string]bool{"github.com/regnorm/regnorm/proxy": true, "github.com/regnorm/regnorm/rewrite": true,
		"github.com/regnorm/regnorm/proxy/normalize": true, "github.com/regnorm/regnorm/proxy/ruleset": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if denied[path] || strings.HasPrefix(path, "github.com/gorilla/") {
				t.Errorf("%s imports %s", file, path)
			}
		}
	}
}
