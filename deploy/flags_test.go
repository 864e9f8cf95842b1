// The binary's flags: hybrid serve -h, read from a build of ../cmd/hybrid.

package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// addedByIssue14 are flags of hybrid serve that issue 14 adds while these
// files are written. Where the binary has one, it is checked as every other
// flag is; where it has not yet, the test says so and skips only it.
var addedByIssue14 = map[string]bool{"redis": true, "redis-fail": true, "api-keys": true, "rate-limit": true}

// binDir holds the hybrid binary the test builds, for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hybrid-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// serveFlag is one flag of hybrid serve, as its -h prints it.
type serveFlag struct {
	name string
	typ  string // "bool", or the type word -h prints: string, duration, int, uint, value
	def  string // the default, unquoted; "" where -h prints none
}

// parseServeHelp reads the flags out of "hybrid serve -h": lines
// "  -name type" (no type for a bool), then the usage lines, the last of
// which may end in "(default X)".
func parseServeHelp(out string) map[string]serveFlag {
	flags := map[string]serveFlag{}
	head := regexp.MustCompile(`^  -([a-z0-9][a-z0-9-]*)(?: ([a-z]+))?$`)
	def := regexp.MustCompile(`\(default (.*)\)$`)
	var cur *serveFlag
	flush := func() {
		if cur != nil {
			flags[cur.name] = *cur
		}
	}
	for line := range strings.SplitSeq(out, "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			flush()
			cur = &serveFlag{name: m[1], typ: m[2]}
			if cur.typ == "" {
				cur.typ = "bool"
			}
			continue
		}
		if cur != nil && strings.HasPrefix(line, "    \t") {
			if m := def.FindStringSubmatch(line); m != nil {
				cur.def = m[1]
				if s, err := strconv.Unquote(cur.def); err == nil {
					cur.def = s
				}
			}
		}
	}
	flush()
	return flags
}

// binEnv names a hybrid binary to check the files against instead of
// building one (a CI step that built it already, or a tree whose build is
// broken for a while).
const binEnv = "DEPLOY_TEST_HYBRID"

// serveFlags builds ../cmd/hybrid once (or takes $DEPLOY_TEST_HYBRID) and
// returns its serve flags.
var serveFlags = sync.OnceValues(func() (map[string]serveFlag, error) {
	bin := os.Getenv(binEnv)
	if bin == "" {
		bin = filepath.Join(binDir, "hybrid")
		build := exec.Command("go", "build", "-C", "..", "-o", bin, "./cmd/hybrid")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build -C .. ./cmd/hybrid: %v\n%s(%s=/path/to/hybrid checks against a binary built elsewhere)", err, out, binEnv)
		}
	}
	out, err := exec.Command(bin, "serve", "-h").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("hybrid serve -h: %v\n%s", err, out)
	}
	flags := parseServeHelp(string(out))
	// A parser that reads nothing would let every flag pass unchecked.
	for _, must := range []string{"addr", "admin-addr", "shutdown-timeout", "isolate-cgroup", "isolate-strict", "workers"} {
		if _, ok := flags[must]; !ok {
			return nil, fmt.Errorf("hybrid serve -h: no --%s read from its %d lines; the parser is broken:\n%s",
				must, strings.Count(string(out), "\n"), out)
		}
	}
	return flags, nil
})

func mustServeFlags(t *testing.T) map[string]serveFlag {
	t.Helper()
	flags, err := serveFlags()
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

// envName is the environment variable of a serve flag (cmd/hybrid/flags.go).
func envName(flag string) string {
	return "HYBRID_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// checkValue reports a value that a flag of type typ would refuse.
func checkValue(typ, v string) error {
	var err error
	switch typ {
	case "bool":
		_, err = strconv.ParseBool(v)
	case "duration":
		_, err = time.ParseDuration(v)
	case "int":
		_, err = strconv.Atoi(v)
	case "uint":
		_, err = strconv.ParseUint(v, 10, 64)
	}
	return err
}

// serveArgs is a container's hybrid serve configuration: its flags from the
// command line and from HYBRID_* variables, checked against the binary.
type serveArgs struct {
	set        map[string]string // flag name → value, from args or env
	fromSecret map[string]bool   // set from a variable's valueFrom: its value is not known here
	skipped    []string          // issue 14's flags the binary does not know yet
}

// parseServeArgs reads args as Go's flag package would (-name, --name,
// -name=value, -name value; a bool takes no separate value) and env's
// HYBRID_* variables, and returns the problems: an unknown flag, a flag set
// twice, a value of the wrong type, a positional argument.
func parseServeArgs(args []string, env []corev1.EnvVar, flags map[string]serveFlag) (serveArgs, []string) {
	sa := serveArgs{set: map[string]string{}, fromSecret: map[string]bool{}}
	var problems []string
	add := func(name, value, where string) {
		f, known := flags[name]
		if !known {
			if addedByIssue14[name] {
				sa.skipped = append(sa.skipped, name)
			} else {
				problems = append(problems, fmt.Sprintf("%s: --%s is no flag of hybrid serve", where, name))
				return
			}
		}
		if _, dup := sa.set[name]; dup {
			problems = append(problems, fmt.Sprintf("%s: --%s is set twice", where, name))
		}
		if known {
			if err := checkValue(f.typ, value); err != nil {
				problems = append(problems, fmt.Sprintf("%s: --%s=%q is no %s: %v", where, name, value, f.typ, err))
			}
		}
		sa.set[name] = value
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			problems = append(problems, fmt.Sprintf("args: %q: hybrid serve takes no positional argument", a))
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !hasValue {
			f, known := flags[name]
			switch {
			case known && f.typ == "bool":
				value = "true"
			case i+1 < len(args):
				i++
				value = args[i]
			default:
				problems = append(problems, fmt.Sprintf("args: --%s wants a value", name))
				continue
			}
		}
		add(name, value, "args")
	}
	for _, e := range env {
		if !strings.HasPrefix(e.Name, "HYBRID_") {
			continue
		}
		var name string
		for n := range flags {
			if envName(n) == e.Name {
				name = n
			}
		}
		for n := range addedByIssue14 {
			if name == "" && envName(n) == e.Name {
				name = n
			}
		}
		if name == "" {
			problems = append(problems, fmt.Sprintf("env: %s is the variable of no flag of hybrid serve", e.Name))
			continue
		}
		if e.ValueFrom != nil {
			// From a Secret or the downward API: set, its value unknown here.
			if _, known := flags[name]; !known {
				sa.skipped = append(sa.skipped, name)
			}
			if _, dup := sa.set[name]; dup {
				problems = append(problems, fmt.Sprintf("env: %s sets --%s, which args set too", e.Name, name))
			}
			sa.set[name], sa.fromSecret[name] = "", true
			continue
		}
		add(name, e.Value, "env "+e.Name)
	}
	return sa, problems
}

// value is the flag's value as the container sets it, else the binary's
// default.
func (sa serveArgs) value(flags map[string]serveFlag, name string) string {
	if v, ok := sa.set[name]; ok {
		return v
	}
	return flags[name].def
}

func TestServeHelpParser(t *testing.T) {
	out := "Usage of serve:\n" +
		"  -addr string\n    \taddress to serve on (default \":8080\")\n" +
		"  -isolate-strict\n    \trefuse to start a worker\n" +
		"  -shutdown-timeout duration\n    \tdrain time (default 30s)\n" +
		"  -max-body value\n    \tlargest request body; larger ones get 413 (default 32MiB)\n"
	got := parseServeHelp(out)
	want := map[string]serveFlag{
		"addr":             {"addr", "string", ":8080"},
		"isolate-strict":   {"isolate-strict", "bool", ""},
		"shutdown-timeout": {"shutdown-timeout", "duration", "30s"},
		"max-body":         {"max-body", "value", "32MiB"},
	}
	if len(got) != len(want) {
		t.Errorf("parseServeHelp = %v; want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("parseServeHelp[%s] = %+v; want %+v", k, got[k], w)
		}
	}
	flags := got
	env := []corev1.EnvVar{{Name: "HYBRID_MAX_BODY", Value: "1MiB"}, {Name: "HYBRID_NOPE", Value: "1"},
		{Name: "HYBRID_API_KEYS", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}}
	sa, problems := parseServeArgs([]string{"--addr=:9000", "-shutdown-timeout", "5x", "--isolate-strict",
		"--redis=redis://r:6379/0", "--bogus=1", "--addr", ":1", "extra"}, env, flags)
	for _, want := range []string{`--shutdown-timeout="5x" is no duration`, "--bogus is no flag", "--addr is set twice",
		`"extra": hybrid serve takes no positional`, "HYBRID_NOPE is the variable of no flag"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("parseServeArgs problems %q; want one saying %q", problems, want)
		}
	}
	if sa.set["isolate-strict"] != "true" || sa.set["max-body"] != "1MiB" || !sa.fromSecret["api-keys"] ||
		!slices.Equal(sa.skipped, []string{"redis", "api-keys"}) {
		t.Errorf("parseServeArgs = %+v", sa)
	}
}
