// The Dockerfile and its ignore file: plain text checks, no docker needed.

package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case
	args string
}

// parseDockerfile returns the stages of a Dockerfile, each starting with
// its FROM.
func parseDockerfile(b []byte) [][]instruction {
	var stages [][]instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") || t == "" {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(t, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(t)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cur.Reset()
		in := instruction{start, strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], in)
		}
	}
	return stages
}

var readDockerfile = sync.OnceValues(func() ([]byte, error) { return os.ReadFile("Dockerfile") })

// dockerEntrypoint returns the final stage's ENTRYPOINT, exec form.
func dockerEntrypoint(t *testing.T) ([]string, [][]instruction) {
	t.Helper()
	b, err := readDockerfile()
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(b)
	if len(stages) == 0 {
		t.Fatal("Dockerfile: no FROM")
	}
	var ep []string
	for _, in := range stages[len(stages)-1] {
		if in.cmd == "ENTRYPOINT" {
			ep = nil
			if err := json.Unmarshal([]byte(in.args), &ep); err != nil {
				t.Errorf("Dockerfile:%d: ENTRYPOINT %s: want the exec form, a JSON array (the image has no shell)", in.line, in.args)
			}
		}
	}
	return ep, stages
}

func TestDockerfile(t *testing.T) {
	ep, stages := dockerEntrypoint(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: %d stage(s); want a build stage and a run stage", len(stages))
	}
	from := func(st []instruction) (image, name string) {
		f := strings.Fields(st[0].args)
		for len(f) > 0 && strings.HasPrefix(f[0], "--") {
			f = f[1:]
		}
		if len(f) == 3 && strings.EqualFold(f[1], "AS") {
			return f[0], f[2]
		}
		if len(f) > 0 {
			return f[0], ""
		}
		return "", ""
	}
	build, buildName := from(stages[0])
	if !strings.HasPrefix(build, "golang:1.26") || buildName == "" {
		t.Errorf("Dockerfile:%d: FROM %s; want golang:1.26-… AS a named build stage", stages[0][0].line, stages[0][0].args)
	}
	if strings.Contains(build, "@sha256:") {
		t.Logf("Dockerfile: the build image is pinned by digest")
	}
	built := false
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st {
			if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
				for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "./cmd/hybrid"} {
					if !strings.Contains(in.args, want) {
						t.Errorf("Dockerfile:%d: go build without %s", in.line, want)
					}
				}
				built = true
			}
		}
	}
	if !built {
		t.Error("Dockerfile: no RUN … go build in a build stage")
	}
	final := stages[len(stages)-1]
	base, _ := from(final)
	if base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("Dockerfile:%d: the run stage is FROM %s; want scratch or gcr.io/distroless/static", final[0].line, base)
	}
	var user string
	copied := map[string]bool{}
	for _, in := range final {
		switch in.cmd {
		case "RUN":
			t.Errorf("Dockerfile:%d: RUN in the run stage: it has no shell", in.line)
		case "USER":
			user = in.args
		case "COPY":
			f := strings.Fields(in.args)
			if slices.Contains(f, "--from="+buildName) && len(f) > 0 {
				copied[f[len(f)-1]] = true
			}
		case "CMD", "HEALTHCHECK":
			a := in.args
			if in.cmd == "HEALTHCHECK" {
				if a == "NONE" {
					continue
				}
				_, a, _ = strings.Cut(a, "CMD ")
			}
			var v []string
			if json.Unmarshal([]byte(strings.TrimSpace(a)), &v) != nil {
				t.Errorf("Dockerfile:%d: %s %s: want the exec form (the image has no shell)", in.line, in.cmd, in.args)
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("Dockerfile: the run stage's USER is %q; want a numeric user other than 0 (runAsNonRoot checks a number)", user)
	}
	if len(ep) < 2 || path.Base(ep[0]) != "hybrid" || ep[1] != "serve" {
		t.Errorf("Dockerfile: ENTRYPOINT %q; want [\"/…/hybrid\", \"serve\"]: hybrid serve is PID 1", ep)
	} else if !copied[ep[0]] {
		t.Errorf("Dockerfile: ENTRYPOINT runs %s, which no COPY --from=%s puts there (copied: %v)", ep[0], buildName, copied)
	}
	// EXPOSE the binary's default serving port.
	flags := mustServeFlags(t)
	_, port, _ := net.SplitHostPort(flags["addr"].def)
	exposed := false
	for _, in := range final {
		if in.cmd == "EXPOSE" {
			for _, p := range strings.Fields(in.args) {
				exposed = exposed || strings.TrimSuffix(p, "/tcp") == port
			}
		}
	}
	if !exposed {
		t.Errorf("Dockerfile: the serving port %s (--addr default %s) is not EXPOSEd", port, flags["addr"].def)
	}
}

// ---------------------------------------------------------------------------
// The Dockerfile's ignore file

// ignoredBy reports whether a context path (slash-separated, relative) is
// excluded by pattern, as Docker matches it: the pattern against the path
// or any of its parent directories; "**/" matches any number of
// directories in front.
func ignoredBy(pattern, p string) (bool, error) {
	pattern = strings.TrimPrefix(path.Clean(pattern), "/")
	if strings.HasPrefix(pattern, "!") || strings.Contains(strings.TrimPrefix(pattern, "**/"), "**") {
		return false, fmt.Errorf("pattern %q: this test reads plain patterns and a leading **/ only", pattern)
	}
	anyDir := strings.HasPrefix(pattern, "**/")
	pattern = strings.TrimPrefix(pattern, "**/")
	parts := strings.Split(p, "/")
	for end := 1; end <= len(parts); end++ {
		for start := 0; start < end; start++ {
			if start > 0 && !anyDir {
				break
			}
			if ok, err := path.Match(pattern, strings.Join(parts[start:end], "/")); err != nil || ok {
				return ok, err
			}
		}
	}
	return false, nil
}

func TestIgnoredBy(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"hybrid", "hybrid", true},
		{"hybrid", "cmd/hybrid/main.go", false},
		{"out", "out/x/y", true},
		{"/out", "out/x", true},
		{"**/*.test", "cmd/hybrid/hybrid.test", true},
		{"**/*.test", "a.test", true},
		{"*.go", "cmd/main.go", false},
		{"cmd/*", "cmd/hybrid/main.go", true},
	} {
		if got, err := ignoredBy(tc.pattern, tc.path); got != tc.want || err != nil {
			t.Errorf("ignoredBy(%q, %q) = %v, %v; want %v", tc.pattern, tc.path, got, err, tc.want)
		}
	}
}

// The Dockerfile's ignore file drops no file go build needs: go.mod, go.sum,
// and every file of every package of the module that cmd/hybrid builds from
// (the files embedded from them included).
func TestDockerignoreKeepsTheBuildsFiles(t *testing.T) {
	b, err := os.ReadFile("Dockerfile.dockerignore")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("no Dockerfile.dockerignore")
	} else if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-C", "..", "-deps", "-json=Dir,Standard,Module,EmbedFiles", "./cmd/hybrid")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/hybrid: %v", err)
	}
	need := []string{"go.mod", "go.sum"}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Dir        string
			Standard   bool
			Module     *struct{ Main bool }
			EmbedFiles []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Standard || p.Module == nil || !p.Module.Main {
			continue
		}
		// Every file of the package's directory, and what it embeds
		// (possibly from below it).
		files := slices.Clone(p.EmbedFiles)
		ents, err := os.ReadDir(p.Dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !e.IsDir() {
				files = append(files, e.Name())
			}
		}
		for _, f := range files {
			rel, err := filepath.Rel(root, filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			need = append(need, filepath.ToSlash(rel))
		}
	}
	if len(need) < 20 {
		t.Fatalf("only %d files found for cmd/hybrid's packages: the walk is broken", len(need))
	}
	slices.Sort(need)
	need = slices.Compact(need)
	dropped := 0
	for _, f := range need {
		for _, pat := range patterns {
			ignored, err := ignoredBy(pat, f)
			if err != nil {
				t.Fatal(err)
			}
			if ignored {
				dropped++
				if dropped <= 10 {
					t.Errorf("Dockerfile.dockerignore: %q drops %s, which the build needs", pat, f)
				}
				break
			}
		}
	}
	for _, must := range []string{".git", "out"} {
		if !slices.Contains(patterns, must) {
			t.Errorf("Dockerfile.dockerignore does not drop %s (a large context, and secrets in .git)", must)
		}
	}
}
