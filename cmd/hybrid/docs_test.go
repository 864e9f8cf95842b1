package main

import (
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The docs' tables are checked against the binary, so that they stay true:
// the flags tables against serve's and bench's FlagSets (name, environment
// variable, default), and the error table against the error codes the code
// declares and answers with.

// docTable returns the rows of the Markdown table in file whose header line
// is header, each split into its trimmed cells ("\|" inside a cell is a "|").
func docTable(t *testing.T, file, header string) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../..", file))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	i := slices.Index(lines, header)
	if i < 0 {
		t.Fatalf("%s: no table with the header %q", file, header)
	}
	var rows [][]string
	for _, l := range lines[i+2:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		l = strings.ReplaceAll(strings.Trim(l, "|"), `\|`, "\x00")
		var row []string
		for _, c := range strings.Split(l, "|") {
			row = append(row, strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|")))
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: the table %q has no rows", file, header)
	}
	return rows
}

var leadingLiteral = regexp.MustCompile("^`([^`]*)`")

// docDefault reads a default cell: its leading `literal` (`""` is the empty
// string), or a word for a default the machine decides. ok is false for a
// cell it cannot read.
func docDefault(cell string) (v string, ok bool) {
	if m := leadingLiteral.FindStringSubmatch(cell); m != nil {
		if m[1] == `""` {
			return "", true
		}
		return strings.ReplaceAll(m[1], "<GOMAXPROCS>", strconv.Itoa(runtime.GOMAXPROCS(0))), true
	}
	switch {
	case cell == "", strings.HasPrefix(cell, "none"):
		return "", true
	case strings.HasPrefix(cell, "GOMAXPROCS"):
		return strconv.Itoa(runtime.GOMAXPROCS(0)), true
	}
	return "", false
}

// sameDefault compares a documented default with a flag's, as values of
// its kind: 1m is 1m0s, 32MiB is 33554432.
func sameDefault(doc string, f *flag.Flag) bool {
	if doc == f.DefValue {
		return true
	}
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			a, err1 := time.ParseDuration(doc)
			b, err2 := time.ParseDuration(f.DefValue)
			return err1 == nil && err2 == nil && a == b
		case uint64:
			a, err1 := parseSize(doc)
			b, err2 := parseSize(f.DefValue)
			return err1 == nil && err2 == nil && a == b
		}
	}
	// hybrid bench's --workers: "1,<GOMAXPROCS>" is "1" on one core.
	return runtime.GOMAXPROCS(0) == 1 && doc == "1,1" && f.DefValue == "1"
}

// checkFlagsTable compares a docs flags table with fs: every flag has one
// row and every row a flag, with its environment variable (envCol >= 0) and
// its default.
func checkFlagsTable(t *testing.T, file string, rows [][]string, fs *flag.FlagSet, envCol, defCol int) {
	t.Helper()
	seen := map[string]bool{}
	for _, row := range rows {
		if len(row) <= defCol {
			t.Errorf("%s: row %q has too few cells", file, row)
			continue
		}
		name := strings.TrimLeft(strings.Trim(row[0], "`"), "-")
		if seen[name] {
			t.Errorf("%s: --%s has two rows", file, name)
		}
		seen[name] = true
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("%s: the row %s names no flag of hybrid %s", file, row[0], fs.Name())
			continue
		}
		if envCol >= 0 {
			if want := "`" + envName(name) + "`"; row[envCol] != want {
				t.Errorf("%s: --%s's variable is %s; want %s", file, name, row[envCol], want)
			}
		}
		doc, ok := docDefault(row[defCol])
		if !ok {
			t.Errorf("%s: --%s's default %q: want a `literal`, none, or GOMAXPROCS first", file, name, row[defCol])
		} else if !sameDefault(doc, f) {
			t.Errorf("%s: --%s's default is %q; the binary's is %q", file, name, doc, f.DefValue)
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if !seen[f.Name] {
			t.Errorf("%s: no row for hybrid %s's --%s (default %q)", file, fs.Name(), f.Name, f.DefValue)
		}
	})
}

// docs/operations.md's flags table is hybrid serve's FlagSet: every flag,
// its environment variable and its default.
func TestDocsServeFlagsTable(t *testing.T) {
	rows := docTable(t, "docs/operations.md", "| flag | env | default | meaning |")
	fs, _ := serveFlagSet(io.Discard)
	checkFlagsTable(t, "docs/operations.md", rows, fs, 1, 2)
}

// docs/bench.md's flags table is hybrid bench's FlagSet, which reads no
// environment variable.
func TestDocsBenchFlagsTable(t *testing.T) {
	rows := docTable(t, "docs/bench.md", "| flag | default | meaning |")
	fs, _, _ := benchFlagSet()
	checkFlagsTable(t, "docs/bench.md", rows, fs, -1, 1)
}

// codeStatus is one error code with one status it is answered with.
type codeStatus struct {
	code   string
	status int
}

// The sources of the error codes: each declares Code* constants, with the
// statuses they are answered with in the constant's comment ("// 503, 429
// per client address").
var errorSources = []string{"server/errors.go", "handlers/registry.go", "handlers/image.go", "handlers/access.go"}

var statusInComment = regexp.MustCompile(`\b[1-5][0-9][0-9]\b`)

// declaredCodes parses errorSources: the value of every Code* constant
// (server.CodeX references resolved), and the code/status pairs their
// comments state.
func declaredCodes(t *testing.T) (values map[string]string, pairs map[codeStatus]bool) {
	t.Helper()
	values, pairs = map[string]string{}, map[codeStatus]bool{}
	for _, src := range errorSources {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("../..", src), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		pkg := f.Name.Name
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
						continue
					}
					var v string
					switch e := vs.Values[i].(type) {
					case *ast.BasicLit:
						v, _ = strconv.Unquote(e.Value)
					case *ast.SelectorExpr:
						v = values[e.X.(*ast.Ident).Name+"."+e.Sel.Name]
					}
					if v == "" {
						t.Fatalf("%s: cannot read %s's value", src, name.Name)
					}
					values[pkg+"."+name.Name] = v
					if vs.Comment == nil {
						t.Errorf("%s: %s has no status in its comment", src, name.Name)
						continue
					}
					for _, s := range statusInComment.FindAllString(vs.Comment.Text(), -1) {
						n, _ := strconv.Atoi(s)
						pairs[codeStatus{v, n}] = true
					}
				}
			}
		}
	}
	return values, pairs
}

// fasthttpStatus maps the fasthttp.Status* names the error call sites use
// to their numbers.
var fasthttpStatus = map[string]int{
	"StatusBadRequest": 400, "StatusUnauthorized": 401, "StatusNotFound": 404, "StatusMethodNotAllowed": 405, "StatusRequestTimeout": 408,
	"StatusRequestEntityTooLarge": 413, "StatusUnsupportedMediaType": 415, "StatusUnprocessableEntity": 422,
	"StatusTooManyRequests": 429, "StatusRequestHeaderFieldsTooLarge": 431, "StatusInternalServerError": 500,
	"StatusNotImplemented": 501, "StatusServiceUnavailable": 503, "StatusGatewayTimeout": 504,
}

// answeredCodes walks the non-test sources of server and handlers for the
// errors they build: Errorf(fasthttp.StatusX, CodeY, …) and handlers'
// unprocessable(CodeY, …) (422), and returns each call's code and status.
func answeredCodes(t *testing.T, values map[string]string) map[codeStatus][]string {
	t.Helper()
	out := map[codeStatus][]string{}
	for _, dir := range []string{"server", "handlers"} {
		files, _ := filepath.Glob(filepath.Join("../..", dir, "*.go"))
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			codeOf := func(e ast.Expr) string {
				switch e := e.(type) {
				case *ast.Ident:
					return values[dir+"."+e.Name]
				case *ast.SelectorExpr:
					if x, ok := e.X.(*ast.Ident); ok {
						return values[x.Name+"."+e.Sel.Name]
					}
				}
				return ""
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				var fn string
				switch e := call.Fun.(type) {
				case *ast.Ident:
					fn = e.Name
				case *ast.SelectorExpr:
					fn = e.Sel.Name
				}
				var cs codeStatus
				switch {
				case fn == "Errorf" && len(call.Args) >= 2:
					sel, ok := call.Args[0].(*ast.SelectorExpr)
					if !ok || sel.X.(*ast.Ident).Name != "fasthttp" {
						return true
					}
					// Codes that are no Code* constant (the admin's) are
					// not the workers' table.
					cs = codeStatus{codeOf(call.Args[1]), fasthttpStatus[sel.Sel.Name]}
					if cs.code != "" && cs.status == 0 {
						t.Errorf("%s: fasthttp.%s: add it to fasthttpStatus", fset.Position(call.Pos()), sel.Sel.Name)
					}
				case fn == "unprocessable" && len(call.Args) >= 1:
					cs = codeStatus{codeOf(call.Args[0]), 422}
				default:
					return true
				}
				if cs.code != "" {
					out[cs] = append(out[cs], fset.Position(call.Pos()).String())
				}
				return true
			})
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d code/status pairs at the call sites; the walk is broken", len(out))
	}
	return out
}

// docs/api.md's error table is the code's: every code the code declares
// with each status its comment gives, and every status a call site answers
// it with, has a row, and every row is such a pair.
func TestDocsErrorCodesTable(t *testing.T) {
	rows := docTable(t, "docs/api.md", "| status | code | when |")
	doc := map[codeStatus]bool{}
	for _, row := range rows {
		n, err := strconv.Atoi(row[0])
		if err != nil || len(row) < 3 {
			t.Errorf("docs/api.md: error row %q: want status | `code` | when", row)
			continue
		}
		doc[codeStatus{strings.Trim(row[1], "`"), n}] = true
	}
	values, declared := declaredCodes(t)
	known := map[string]bool{}
	for _, v := range values {
		known[v] = true
	}
	for cs := range declared {
		if !doc[cs] {
			t.Errorf("docs/api.md: no row for %d `%s`, which the code declares", cs.status, cs.code)
		}
	}
	for cs, at := range answeredCodes(t, values) {
		if !doc[cs] {
			t.Errorf("docs/api.md: no row for %d `%s`, which %s answers", cs.status, cs.code, at[0])
		}
	}
	for cs := range doc {
		if !known[cs.code] {
			t.Errorf("docs/api.md: `%s` is no error code of the code's", cs.code)
		} else if !declared[cs] {
			t.Errorf("docs/api.md: %d `%s`: the code declares %s with other statuses", cs.status, cs.code, cs.code)
		}
	}
}
