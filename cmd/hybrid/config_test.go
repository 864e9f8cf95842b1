package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testFlags is a small flag set with a --config flag, as parseFlags sees
// serve's.
func testFlags() (*flag.FlagSet, map[string]*string) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := map[string]*string{}
	for _, name := range []string{"config", "a", "b", "c", "d", "mode"} {
		v[name] = fs.String(name, "default-"+name, "")
	}
	var size uint64
	fs.Var(sizeFlag{&size}, "max-body", "")
	fs.Int("workers", 1, "")
	return fs, v
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hybrid.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Command line > environment > file > default, one flag at each level, and
// HYBRID_CONFIG names the file when --config does not.
func TestConfigPrecedence(t *testing.T) {
	path := writeConfig(t, "# every level\n\nb = from-file\n  c=from-file  \nd = from-file\nmode = image=pool,hash=inline\n")
	t.Setenv("HYBRID_C", "from-env")
	t.Setenv("HYBRID_D", "from-env")
	for _, args := range [][]string{{"--config", path, "--d", "from-flag"}, {"--d", "from-flag"}} {
		t.Setenv("HYBRID_CONFIG", path)
		if len(args) == 4 {
			t.Setenv("HYBRID_CONFIG", "/nonexistent: --config wins")
		}
		fs, v := testFlags()
		if err := parseFlags(fs, args); err != nil {
			t.Fatalf("parseFlags(%q) = %v", args, err)
		}
		got := fmt.Sprint(*v["a"], " ", *v["b"], " ", *v["c"], " ", *v["d"], " ", *v["mode"])
		if want := "default-a from-file from-env from-flag image=pool,hash=inline"; got != want {
			t.Errorf("parseFlags(%q): a b c d mode = %s; want %s", args, got, want)
		}
	}
}

// Every mistake in a file is one line naming file:line, and every line is
// checked, even one the command line overrides.
func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"a = 1\nnope = 2\n", `:2: unknown setting "nope"`},
		{"a = 1\n\n# c\na = 2\n", ":4: a set again (first on line 1)"},
		{"a\n", ":1: want name = value"},
		{" = x\n", ":1: want name = value"},
		{"--max-body = 1MiB\n", ":1: write max-body, not --max-body"},
		{"config = other.conf\n", ":1: a configuration file cannot name another"},
		{"b = x\nmax-body = 12XB\n", `:2: max-body = "12XB": size "12XB": unknown unit`},
		{"workers = many\n", `:1: workers = "many": parse error`},
		{`a = "open` + "\n", ":1: a: a quoted value must be one Go string literal"},
	} {
		path := writeConfig(t, tc.text)
		fs, _ := testFlags()
		err := parseFlags(fs, []string{"--config", path, "--max-body", "1MiB", "--workers", "2"})
		if err == nil || !strings.Contains(err.Error(), "config: "+path+tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("file %q: parseFlags = %v; want one line with %q", tc.text, err, path+tc.want)
		}
	}
	fs, _ := testFlags()
	if err := parseFlags(fs, []string{"--config", "/nonexistent.conf"}); err == nil || !strings.Contains(err.Error(), "/nonexistent.conf") {
		t.Errorf("a missing file: parseFlags = %v; want an error naming it", err)
	}
}

// A quoted value keeps its spaces, or is empty; a # inside a value is
// part of it.
func TestConfigFileValues(t *testing.T) {
	path := writeConfig(t, "a = \"  two spaces  \"\nb = \"\"\nc = x#y\nmax-body = 64MiB\r\n")
	fs, v := testFlags()
	if err := parseFlags(fs, []string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	if *v["a"] != "  two spaces  " || *v["b"] != "" || *v["c"] != "x#y" || fs.Lookup("max-body").Value.String() != "64MiB" {
		t.Errorf("a %q, b %q, c %q, max-body %s; want %q, %q, %q, 64MiB",
			*v["a"], *v["b"], *v["c"], fs.Lookup("max-body").Value, "  two spaces  ", "", "x#y")
	}
}

func TestParseFlagsArgs(t *testing.T) {
	for _, args := range [][]string{{"4", "--a", "x"}, {"--a", "x", "4"}, {"--a=x", "4"}} {
		fs, v := testFlags()
		pos, err := parseFlagsArgs(fs, args)
		if err != nil || !slices.Equal(pos, []string{"4"}) || *v["a"] != "x" {
			t.Errorf("parseFlagsArgs(%q) = %q, %v, a %q; want [4], a x", args, pos, err, *v["a"])
		}
	}
}

// The primary-level names are serve's flags, and a diff names the
// changed ones only.
func TestChangedPrimarySettings(t *testing.T) {
	fs, _ := serveFlagSet(io.Discard)
	for _, name := range primarySettings {
		if fs.Lookup(name) == nil {
			t.Errorf("primarySettings names %q, which is no flag of hybrid serve", name)
		}
	}
	old := map[string]string{"addr": ":8080", "workers": "2", "max-body": "32MiB"}
	now := map[string]string{"addr": ":9090", "workers": "3", "max-body": "64MiB"}
	if got := changedPrimarySettings(old, now); !slices.Equal(got, []string{"addr", "workers"}) {
		t.Errorf("changedPrimarySettings = %q; want [addr workers]", got)
	}
}

// hybrid serve through the real binary: --workers on the command line wins
// over HYBRID_WORKERS, which wins over the file's workers; the file's
// listen-mode wins over the default; HYBRID_MAX_BODY wins over the file's.
func TestConfigPrecedenceThroughBinary(t *testing.T) {
	path := writeConfig(t, "workers = 3\nlisten-mode = reuseport\nmax-body = 1KiB\n")
	c := startCluster(t, []string{"HYBRID_CONFIG=" + path, "HYBRID_WORKERS=2", "HYBRID_MAX_BODY=2KiB"}, 1, "--workers", "1")
	if s := c.snapshot(); s.WorkersWanted != 1 || s.ListenMode != "reuseport" {
		t.Errorf("workers %d, listen mode %s; want 1 (the flag), reuseport (the file)", s.WorkersWanted, s.ListenMode)
	}
	url := "http://" + c.addr + "/v1/hash/sha256"
	if r := post(t, url, bytes.Repeat([]byte("x"), 1536)); r.status != 200 {
		t.Errorf("POST 1.5KiB = %d; want 200 (HYBRID_MAX_BODY=2KiB over the file's 1KiB)", r.status)
	}
	if r := post(t, url, bytes.Repeat([]byte("x"), 3000)); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("POST 3000 bytes = %d; want 413", r.status)
	}
}

// A reload with an invalid file changes nothing, says why in one line, and
// `hybrid reload` exits 1; once the file is fixed, the reload runs and logs
// the primary-level settings it cannot apply.
func TestInvalidConfigOnReload(t *testing.T) {
	path := writeConfig(t, "workers = 2\n")
	c := startCluster(t, []string{"HYBRID_CONFIG=" + path}, 2)
	before := c.readyPIDs()
	if err := os.WriteFile(path, []byte("workers = 2\nmax-body = 12XB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin)
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, path+":2: max-body") || out != "" {
		t.Errorf("hybrid reload with a bad file: exit %d, stdout %q, stderr %q; want 1 and one line naming %s:2", code, out, errOut, path)
	}
	c.signal(syscall.SIGHUP)
	c.waitFor(5*time.Second, "two refusals in the log", func() bool { return len(c.logs.find("reload refused")) == 2 })
	time.Sleep(200 * time.Millisecond)
	if started := c.logs.find("rolling reload started"); len(started) > 0 {
		t.Errorf("a reload started with an invalid file: %v", started)
	}
	if s := c.snapshot(); !maps.Equal(c.readyPIDs(), before) || s.WorkersReady != 2 {
		t.Errorf("after the refused reloads: workers %v, ready %d; want the old ones %v, 2", c.readyPIDs(), s.WorkersReady, before)
	}

	if err := os.WriteFile(path, []byte("workers = 3\nmax-body = 2MiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid reload with a fixed file: exit %d, %q %q; want 0", code, out, errOut)
	}
	line := c.waitLog("apply on upgrade", 5*time.Second)
	if msg := line["msg"].(string); !strings.HasSuffix(msg, ": workers") {
		t.Errorf("reload log %q; want it to name workers alone", msg)
	}
	c.waitLog("rolling reload started", 5*time.Second)
}
