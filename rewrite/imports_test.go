package rewrite

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayPure keeps rewrite free of I/O, logging, metrics and the
// other regnorm packages (ggcr's depcheck, in small).
func TestImportsStayPure(t *testing.T) {
	t.Parallel()
	allowedModules := []string{
		"github.com/opencontainers/go-digest",
		"github.com/opencontainers/image-spec/",
		"github.com/klauspost/compress/",
		"github.com/regnorm/regnorm/internal/schema1",
	}
	deniedStd := map[string]bool{"net": true, "net/http": true, "os": true, "os/exec": true, "log": true,
		"log/slog": true, "syscall": true, "unsafe": true, "time": true, "math/rand": true, "math/rand/v2": true}
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
			std := !strings.Contains(strings.Split(path, "/")[0], ".")
			ok := std && !deniedStd[path]
			for _, m := range allowedModules {
				ok = ok || strings.HasPrefix(path, m)
			}
			if !ok {
				t.Errorf("%s imports %s: rewrite must stay pure", file, path)
			}
		}
	}
}
