package proxy_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestSubpackagesStayApart keeps each room of proxy/ to its job (STYLE.md):
// which regnorm packages each may import, and that only proxy/ itself
// speaks regnorm's HTTP API (gorilla/mux). The engine and maintenance
// (cache/maintain, checked here too) do no HTTP at all; the engine touches
// no files (it reads through its Source).
func TestSubpackagesStayApart(t *testing.T) {
	t.Parallel()
	const own = "github.com/regnorm/regnorm/"
	type room struct {
		dir    string
		own    []string // the regnorm packages it may import
		denied []string // standard packages it may not
	}
	rooms := []room{
		{dir: "errcode"},
		{dir: "attest", own: []string{"internal/cosign"}, denied: []string{"net/http", "os"}},
		{dir: "ruleset", own: []string{"internal/containerdcfg"}, denied: []string{"net/http", "os"}},
		{dir: "label"},
		{dir: "upstream", own: []string{"proxy/errcode", "proxy/label", "internal/mediatype", "internal/schema1"}},
		{dir: "blobfetch", own: []string{"cache", "proxy/errcode", "proxy/upstream"}},
		{dir: "normalize", own: []string{"cache", "rewrite", "proxy/ruleset", "internal/schema1"}, denied: []string{"net/http", "os"}},
		{dir: "fleet", own: []string{"cache", "internal/containerdcfg", "internal/recent", "proxy/label", "proxy/ruleset"}, denied: []string{"os"}},
		{dir: "rewrites", own: []string{"cache", "internal/recent", "proxy/normalize", "proxy/ruleset"}, denied: []string{"net/http", "os"}},
		{dir: "operator", own: []string{"cache", "internal/imageref", "internal/containerdcfg", "internal/recent", "proxy/errcode", "proxy/fleet", "cache/maintain", "proxy/mirror", "proxy/normalize", "proxy/ruleset", "proxy/upstream"}, denied: []string{"os"}},
		{dir: "mirror", own: []string{"cache", "proxy/attest", "internal/flight", "internal/mediatype", "internal/schema1", "proxy/blobfetch", "proxy/errcode", "proxy/normalize", "proxy/replicas", "proxy/ruleset", "proxy/upstream"}, denied: []string{"os"}},
		{dir: "premade", own: []string{"cache", "proxy/normalize", "proxy/ruleset", "proxy/upstream"}, denied: []string{"net/http", "os"}},
		{dir: "verify", own: []string{"cache", "proxy/attest", "proxy/blobfetch", "internal/cosign", "proxy/errcode", "proxy/mirror", "proxy/normalize", "proxy/ruleset", "proxy/upstream"}, denied: []string{"os"}},
		{dir: "replicas", own: []string{"cache", "internal/mediatype", "proxy/errcode", "proxy/ruleset"}, denied: []string{"os"}},
		{dir: "webhook", own: []string{"cache", "internal/imageref", "proxy/mirror", "proxy/normalize", "proxy/ruleset", "proxy/upstream"}, denied: []string{"os"}},
		{dir: "../cache/maintain", own: []string{"cache"}, denied: []string{"net/http"}}, // beside the cache, kept apart from proxy/ all the same
	}
	// A new room gets its line in the table.
	dirs, err := filepath.Glob("*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range dirs {
		dir := filepath.Dir(file)
		if !slices.ContainsFunc(rooms, func(r room) bool { return r.dir == dir }) {
			t.Errorf("proxy/%s is not in this test's table", dir)
		}
	}
	for _, tt := range rooms {
		files, err := filepath.Glob(filepath.Join(tt.dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no Go files (%v)", tt.dir, err)
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
				rest, isOwn := strings.CutPrefix(path, own)
				if isOwn && !slices.Contains(tt.own, rest) || slices.Contains(tt.denied, path) || strings.HasPrefix(path, "github.com/gorilla/") {
					t.Errorf("%s imports %s", file, path)
				}
			}
		}
	}
}

// TestOnlyUpstreamBuildsRegistryPaths keeps the registry protocol in one
// place (STYLE.md): no string in the module's code names a /v2/ path but in
// proxy/upstream, which asks upstreams, and the router, which serves
// clients. Everyone else asks an upstream.Repository. internal/regtest is
// test support that pushes to test registries as a client of its own; only
// tests import it, which this test checks too.
func TestOnlyUpstreamBuildsRegistryPaths(t *testing.T) {
	t.Parallel()
	const root = ".."
	allowed := func(path string) bool {
		return strings.HasPrefix(path, "proxy/upstream/") || path == "proxy/routes.go"
	}
	const testSupport = "internal/regtest/"
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(file string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && file != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(file, ".go") || strings.HasSuffix(file, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, file)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		imports := map[*ast.BasicLit]bool{}
		for _, imp := range f.Imports {
			imports[imp.Path] = true
			if path, _ := strconv.Unquote(imp.Path.Value); strings.HasSuffix(path, "/"+strings.TrimSuffix(testSupport, "/")) {
				t.Errorf("%s imports %s, which is for tests only", rel, path)
			}
		}
		if allowed(rel) || strings.HasPrefix(rel, testSupport) {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || imports[lit] {
				return true
			}
			if v, err := strconv.Unquote(lit.Value); err == nil && strings.Contains(v, "/v2") {
				t.Errorf("%s: %s builds a registry path: ask an upstream.Repository", fset.Position(lit.Pos()), lit.Value)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOnlyTheMirrorReadsRepositories keeps admission in one place: proxy/'s
// own code (the handlers, warm, the report and status page) reads a
// repository's content only through a mirror.Repository. It never asks an
// upstream handle for an object or a confirmation, nor runs the fetcher or
// the engine itself; the cache it holds (proxy.Store) has no content to
// read.
func TestOnlyTheMirrorReadsRepositories(t *testing.T) {
	t.Parallel()
	mirrorOnly := []string{
		"HeadManifest", "GetManifest", "HeadBlob", "GetBlob", "CheckBlobSize", "Confirm", "Confirmed", // upstream.Repository
		"Join", "Ready", "Ensure", // blobfetch.Fetcher
		"Normalize", "RebuildLayer", // normalize.Engine
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		packages := map[string]bool{} // errors.Join is no download
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			name := filepath.Base(p)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			packages[name] = true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !slices.Contains(mirrorOnly, sel.Sel.Name) {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && packages[id.Name] {
				return true
			}
			t.Errorf("%s: proxy/ calls %s itself: ask a mirror.Repository", fset.Position(sel.Pos()), sel.Sel.Name)
			return true
		})
	}
}
