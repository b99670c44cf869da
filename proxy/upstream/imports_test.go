package upstream

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestClientStaysApart keeps the upstream client to its job: it speaks to
// registries and knows nothing of the cache, the rules or regnorm's own
// HTTP API. Of regnorm it imports only the error type it answers with.
func TestClientStaysApart(t *testing.T) {
	t.Parallel()
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
			own := strings.HasPrefix(path, "github.com/regnorm/regnorm")
			if own && path != "github.com/regnorm/regnorm/proxy/errcode" || strings.HasPrefix(path, "github.com/gorilla/") {
				t.Errorf("%s imports %s", file, path)
			}
		}
	}
}
