package proxy_test

import (
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// maxMethods bounds every interface in the module (STYLE.md): a consumer
// states the few methods it needs, where it uses them.
const maxMethods = 15

// TestInterfacesAreSmall: no interface in the module's code (tests aside)
// has more than maxMethods methods, counting what it embeds. Named or not,
// in any package.
func TestInterfacesAreSmall(t *testing.T) {
	t.Parallel()
	const root = ".."
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(gomod), "\n")
	module, ok := strings.CutPrefix(strings.TrimSpace(first), "module ")
	if !ok {
		t.Fatalf("go.mod does not start with its module path: %q", first)
	}
	ifaces := newInterfaceIndex(module)
	err = filepath.WalkDir(root, func(file string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && file != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(file, ".go") || strings.HasSuffix(file, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(file))
		if err != nil {
			return err
		}
		src, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		return ifaces.add(path.Join(module, filepath.ToSlash(rel)), file, src)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ifaces.all) < 20 {
		t.Fatalf("found %d interfaces: the walk missed the module", len(ifaces.all))
	}
	var largest string
	most := 0
	for _, it := range ifaces.all {
		n, err := ifaces.count(it)
		if n > most {
			largest, most = fmt.Sprintf("%s (%s)", it.name, ifaces.fset.Position(it.node.Pos())), n
		}
		switch {
		case err != nil:
			t.Errorf("%s: %v", ifaces.fset.Position(it.node.Pos()), err)
		case n > maxMethods:
			t.Errorf("%s: interface %s has %d methods, more than %d: state the few methods the consumer needs",
				ifaces.fset.Position(it.node.Pos()), it.name, n, maxMethods)
		}
	}
	t.Logf("the largest interface: %s, %d methods", largest, most)
}

// TestInterfaceCount checks the counting itself: methods, embedded
// interfaces of the package, of another package of the module and of the
// standard library, and a method two of them share.
func TestInterfaceCount(t *testing.T) {
	t.Parallel()
	ifaces := newInterfaceIndex("example.com/m")
	files := map[string]string{
		"example.com/m/a": `package a
type Two interface { A(); B() }`,
		"example.com/m/b": `package b
import (
	"io"
	"example.com/m/a"
)
type Own interface { C(); D(x int) error }
type All interface {
	a.Two
	Own
	io.ReadCloser
	Close() error
	E()
}`,
	}
	for pkg, src := range files {
		if err := ifaces.add(pkg, pkg+"/x.go", []byte(src)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]int{"Two": 2, "Own": 2, "All": 2 + 2 + 2 + 1} // Close once
	for _, it := range ifaces.all {
		got, err := ifaces.count(it)
		if err != nil || got != want[it.name] {
			t.Errorf("%s: %d methods (%v), want %d", it.name, got, err, want[it.name])
		}
	}
}

// interfaceIndex is every interface type of a set of files, by package.
type interfaceIndex struct {
	module string
	fset   *token.FileSet
	named  map[string]*iface // by package path + "." + name
	all    []*iface
	std    types.Importer // for what is embedded from outside the module
}

type iface struct {
	name    string // "" for an interface literal
	pkg     string
	node    *ast.InterfaceType
	imports map[string]string // the file's: by local name, the path
}

func newInterfaceIndex(module string) *interfaceIndex {
	fset := token.NewFileSet()
	return &interfaceIndex{module: module, fset: fset, named: map[string]*iface{}, std: importer.ForCompiler(fset, "source", nil)}
}

func (x *interfaceIndex) add(pkg, filename string, src []byte) error {
	f, err := parser.ParseFile(x.fset, filename, src, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	imports := map[string]string{}
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		name := path.Base(p)
		if imp.Name != nil {
			name = imp.Name.Name
		} else if strings.HasPrefix(name, "v") && strings.Contains(p, "/") {
			if _, err := strconv.Atoi(name[1:]); err == nil { // a major version suffix
				name = path.Base(path.Dir(p))
			}
		}
		imports[name] = p
	}
	names := map[*ast.InterfaceType]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		if ts, ok := n.(*ast.TypeSpec); ok {
			if it, ok := ts.Type.(*ast.InterfaceType); ok {
				names[it] = ts.Name.Name
			}
		}
		it, ok := n.(*ast.InterfaceType)
		if !ok {
			return true
		}
		i := &iface{name: names[it], pkg: pkg, node: it, imports: imports}
		if i.name != "" {
			x.named[pkg+"."+i.name] = i
		} else {
			i.name = "literal"
		}
		x.all = append(x.all, i)
		return true
	})
	return nil
}

// count is how many methods it has, with what it embeds.
func (x *interfaceIndex) count(it *iface) (int, error) {
	methods := map[string]bool{}
	if err := x.collect(it, methods, 0); err != nil {
		return 0, err
	}
	return len(methods), nil
}

func (x *interfaceIndex) collect(it *iface, methods map[string]bool, depth int) error {
	if depth > 32 {
		return fmt.Errorf("interface %s embeds itself", it.name)
	}
	for _, field := range it.node.Methods.List {
		if len(field.Names) > 0 {
			for _, n := range field.Names {
				methods[n.Name] = true
			}
			continue
		}
		var pkg, name string
		switch e := field.Type.(type) {
		case *ast.Ident:
			pkg, name = it.pkg, e.Name
		case *ast.SelectorExpr:
			id, ok := e.X.(*ast.Ident)
			if !ok || it.imports[id.Name] == "" {
				return fmt.Errorf("interface %s embeds %s, which this test cannot resolve", it.name, types.ExprString(e))
			}
			pkg, name = it.imports[id.Name], e.Sel.Name
		default:
			continue // a type constraint's union or ~T: no methods
		}
		if embedded, ok := x.named[pkg+"."+name]; ok {
			if err := x.collect(embedded, methods, depth+1); err != nil {
				return err
			}
			continue
		}
		if pkg == x.module || strings.HasPrefix(pkg, x.module+"/") {
			if pkg == it.pkg && types.Universe.Lookup(name) != nil {
				continue // comparable, any
			}
			return fmt.Errorf("interface %s embeds %s.%s, which is not an interface of the module", it.name, pkg, name)
		}
		p, err := x.std.Import(pkg)
		if err != nil {
			return fmt.Errorf("interface %s embeds %s.%s: %v", it.name, pkg, name, err)
		}
		obj := p.Scope().Lookup(name)
		if obj == nil {
			return fmt.Errorf("interface %s embeds %s.%s, which does not exist", it.name, pkg, name)
		}
		ext, ok := types.Unalias(obj.Type()).Underlying().(*types.Interface)
		if !ok {
			return fmt.Errorf("interface %s embeds %s.%s, which is not an interface", it.name, pkg, name)
		}
		for m := range ext.Methods() {
			methods[m.Name()] = true
		}
	}
	return nil
}
