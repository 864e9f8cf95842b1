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
// errors they build: Errorf(fasthttp.StatusX, CodeY, …), handlers'
// unprocessable(CodeY, …) (422), Error{Status: …, Code: …} literals, and
// handlers' jobCodes (an isolated child's codes and their statuses), and
// returns each one's code and status.
func answeredCodes(t *testing.T, values map[string]string) map[codeStatus][]string {
	t.Helper()
	out := map[codeStatus][]string{}
	jobCodesSeen := 0
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
			add := func(cs codeStatus, at token.Pos) {
				if cs.code != "" {
					out[cs] = append(out[cs], fset.Position(at).String())
				}
			}
			statusOf := func(e ast.Expr) int {
				switch e := e.(type) {
				case *ast.SelectorExpr: // fasthttp.StatusX
					if x, ok := e.X.(*ast.Ident); ok && x.Name == "fasthttp" {
						if n, ok := fasthttpStatus[e.Sel.Name]; ok {
							return n
						}
						t.Errorf("%s: fasthttp.%s: add it to fasthttpStatus", fset.Position(e.Pos()), e.Sel.Name)
					}
				case *ast.BasicLit: // 422
					n, _ := strconv.Atoi(e.Value)
					return n
				}
				return 0
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.CompositeLit:
					// Error{Status: fasthttp.StatusX, Code: CodeY, …}, as a
					// value or behind &.
					if !isErrorType(n.Type) {
						return true
					}
					var cs codeStatus
					for _, el := range n.Elts {
						kv, ok := el.(*ast.KeyValueExpr)
						if !ok {
							continue
						}
						switch key, _ := kv.Key.(*ast.Ident); {
						case key == nil:
						case key.Name == "Status":
							cs.status = statusOf(kv.Value)
						case key.Name == "Code":
							cs.code = codeOf(kv.Value)
						}
					}
					if cs.status != 0 { // else built from a value (a child's error)
						add(cs, n.Pos())
					}
					return true
				case *ast.ValueSpec:
					// jobCodes: the codes an isolated child may answer with,
					// and their statuses.
					if len(n.Names) != 1 || n.Names[0].Name != "jobCodes" || len(n.Values) != 1 {
						return true
					}
					lit, ok := n.Values[0].(*ast.CompositeLit)
					if !ok {
						t.Fatalf("%s: jobCodes is no map literal", fset.Position(n.Pos()))
					}
					for _, el := range lit.Elts {
						kv := el.(*ast.KeyValueExpr)
						cs := codeStatus{codeOf(kv.Key), statusOf(kv.Value)}
						if cs.code == "" || cs.status == 0 {
							t.Errorf("%s: a jobCodes entry the walk cannot read", fset.Position(kv.Pos()))
						}
						add(cs, kv.Pos())
						jobCodesSeen++
					}
					return true
				}
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
				add(cs, call.Pos())
				return true
			})
		}
	}
	if jobCodesSeen < 10 {
		t.Fatalf("read %d entries of handlers' jobCodes; the walk is broken", jobCodesSeen)
	}
	if len(out) < 20 {
		t.Fatalf("found only %d code/status pairs at the call sites; the walk is broken", len(out))
	}
	return out
}

// isErrorType reports whether e names server's Error type (Error in
// server, server.Error elsewhere).
func isErrorType(e ast.Expr) bool {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name == "Error"
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		return ok && x.Name == "server" && e.Sel.Name == "Error"
	}
	return false
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

// clientCommands are the subcommands that talk to a running primary.
var clientCommands = []string{"status", "reload", "upgrade", "scale", "pool"}

// usageFlag is one flag in a command's -h: its default as the flag
// package prints it ("" and false are not printed).
var (
	usageName    = regexp.MustCompile(`^  -([a-z][a-z0-9-]*)(?: (\w+))?$`)
	usageDefault = regexp.MustCompile(`\(default (.*)\)$`)
)

// clientFlags runs `hybrid <command> -h` for each client command and
// returns every flag, with its default, and the commands that have it.
func clientFlags(t *testing.T) (defaults map[string]string, commands map[string][]string) {
	t.Helper()
	defaults, commands = map[string]string{}, map[string][]string{}
	for _, cmd := range clientCommands {
		_, usage, code := runHybrid(t, nil, cmd, "-h")
		if code != 0 || !strings.HasPrefix(usage, "Usage of "+cmd+":") {
			t.Fatalf("hybrid %s -h: exit %d:\n%s", cmd, code, usage)
		}
		lines := strings.Split(usage, "\n")
		for i, l := range lines {
			m := usageName.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			def := ""
			if m[2] == "" { // a bool
				def = "false"
			}
			if i+1 < len(lines) {
				if d := usageDefault.FindStringSubmatch(lines[i+1]); d != nil {
					def = d[1]
					if u, err := strconv.Unquote(def); err == nil {
						def = u
					}
				}
			}
			if old, ok := defaults[m[1]]; ok && old != def {
				t.Errorf("--%s: default %q in one command, %q in another", m[1], old, def)
			}
			defaults[m[1]] = def
			commands[m[1]] = append(commands[m[1]], cmd)
		}
	}
	if len(defaults) < 5 || len(commands["admin-addr"]) != len(clientCommands) {
		t.Fatalf("read %v from the client commands' -h; the parse is broken", commands)
	}
	return defaults, commands
}

// docs/operations.md's "Client subcommands" section names every flag of
// the client commands (hybrid status, reload, upgrade, scale, pool) and
// only flags hybrid has; its variables are those flags'. Its flags table,
// once there, is the commands' flags: name, variable, default, commands.
func TestDocsClientFlags(t *testing.T) {
	defaults, commands := clientFlags(t)
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Client subcommands\n")
	if !ok {
		t.Fatal("docs/operations.md: no section ## Client subcommands")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	serve, _ := serveFlagSet(io.Discard)
	named := map[string]bool{}
	for _, m := range regexp.MustCompile(`--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(section, -1) {
		named[m[1]] = true
		if _, ok := defaults[m[1]]; !ok && serve.Lookup(m[1]) == nil {
			t.Errorf("docs/operations.md, Client subcommands: --%s is no flag of hybrid", m[1])
		}
	}
	for _, m := range regexp.MustCompile(`HYBRID_[A-Z_]+`).FindAllString(section, -1) {
		found := false
		for name := range defaults {
			found = found || envName(name) == m
		}
		if !found && m != "HYBRID_CONFIG" {
			t.Errorf("docs/operations.md, Client subcommands: %s is no client flag's variable", m)
		}
	}
	for name := range defaults {
		if !named[name] {
			t.Errorf("docs/operations.md, Client subcommands: --%s (of %v) is not named", name, commands[name])
		}
	}

	const header = "| flag | env | default | commands | meaning |"
	if !strings.Contains(section, "\n"+header+"\n") {
		t.Fatalf("docs/operations.md, Client subcommands: no client flags table (%q)", header)
	}
	rows := docTable(t, "docs/operations.md", header)
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	for name, def := range defaults {
		fs.String(name, def, "")
	}
	checkFlagsTable(t, "docs/operations.md", rows, fs, 1, 2)
	for _, row := range rows {
		name := strings.TrimLeft(strings.Trim(row[0], "`"), "-")
		if len(row) < 4 || commands[name] == nil {
			continue
		}
		want := "all"
		if len(commands[name]) != len(clientCommands) {
			want = "`" + strings.Join(commands[name], "`, `") + "`"
		}
		if row[3] != want {
			t.Errorf("docs/operations.md: --%s is a flag of %s; want %s", name, row[3], want)
		}
	}
}
