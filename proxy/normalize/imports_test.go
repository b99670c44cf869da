package normalize

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestEngineStaysApart keeps the engine free of HTTP and of the packages
// around it: it reads through Source, and proxy/ serves what it returns.
func TestEngineStaysApart(t *testing.T) {
	t.Parallel()
	denied := map[string]bool{"net/http": true, "github.com/regnorm/regnorm/proxy": true, "os": true}
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
