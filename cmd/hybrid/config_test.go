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

// A value a flag refuses is named once, cut to server.Quote's length: a
// 60 KB bad value makes a short error line, from the file or from the
// environment.
func TestConfigErrorsQuoteValuesShort(t *testing.T) {
	long := "1" + strings.Repeat("X", 60<<10) // within maxConfigFile
	path := writeConfig(t, "max-body = "+long+"\n")
	fs, _ := testFlags()
	err := parseFlags(fs, []string{"--config", path})
	if err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), path+`:1: max-body = "1XXX`) {
		t.Errorf("a 60 KB bad max-body in the file: %d bytes of error %.300q; want one short line naming it", len(fmt.Sprint(err)), err)
	}
	path = writeConfig(t, strings.Repeat("-n", 30<<10)+" = 1\n")
	fs, _ = testFlags()
	if err := parseFlags(fs, []string{"--config", path}); err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), "unknown setting") {
		t.Errorf("a 60 KB unknown name: %d bytes of error %.300q; want one short line", len(fmt.Sprint(err)), err)
	}
	t.Setenv("HYBRID_MAX_BODY", long)
	fs, _ = testFlags()
	if err := parseFlags(fs, nil); err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), `invalid HYBRID_MAX_BODY="1XXX`) {
		t.Errorf("a 60 KB bad HYBRID_MAX_BODY: %d bytes of error %.300q; want one short line naming it", len(fmt.Sprint(err)), err)
	}
}

// Only a regular file of at most maxConfigFile text bytes is read, and a
// FIFO is refused at once: its open does not wait for a writer.
func TestConfigFileKinds(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.conf")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := writeConfig(t, "# "+strings.Repeat("x", maxConfigFile)+"\n")
	nul := writeConfig(t, "a = x\x00y\n")
	for path, want := range map[string]string{
		fifo: fifo + ": a FIFO, not a regular file",
		dir:  dir + ": a directory, not a regular file",
		big:  big + ": larger than 64KiB",
		nul:  nul + ": holds a NUL byte",
	} {
		done := make(chan error, 1)
		go func() {
			fs, _ := testFlags()
			done <- parseFlags(fs, []string{"--config", path})
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("--config %s: parseFlags = %v; want one line with %q", path, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("--config %s: parseFlags still blocked after 5s", path)
		}
	}
}

// A worker parses the contents its primary passed in HYBRID_CONFIG_SNAPSHOT
// and never opens the file; without them it refuses to start.
func TestConfigWorkerParsesSnapshot(t *testing.T) {
	t.Setenv("HYBRID_ROLE", "worker")
	t.Setenv(snapshotEnv, "a = from-snapshot\n")
	fs, v := testFlags()
	if err := parseFlags(fs, []string{"--config", "/nonexistent.conf"}); err != nil || *v["a"] != "from-snapshot" {
		t.Errorf("worker: parseFlags = %v, a = %q; want nil, from-snapshot (the file does not exist)", err, *v["a"])
	}
	t.Setenv(snapshotEnv, "a = 1\nnope = 2\n")
	fs, _ = testFlags()
	if err := parseFlags(fs, []string{"--config", "/etc/hybrid.conf"}); err == nil || !strings.Contains(err.Error(), `/etc/hybrid.conf:2: unknown setting "nope"`) {
		t.Errorf("worker, bad snapshot: parseFlags = %v; want the file's name and line", err)
	}
	os.Unsetenv(snapshotEnv)
	fs, _ = testFlags()
	if err := parseFlags(fs, []string{"--config", writeConfig(t, "a = 1\n")}); err == nil || !strings.Contains(err.Error(), snapshotEnv) {
		t.Errorf("worker without a snapshot: parseFlags = %v; want a refusal naming %s", err, snapshotEnv)
	}
}

// postFresh POSTs body to url on a new connection, so that a worker killed
// since the last request is not on the other end.
func postFresh(t *testing.T, url string, body []byte) int {
	t.Helper()
	resp, err := freshClient().Post(url, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// killWorker SIGKILLs the ready worker pid and waits until want workers are
// ready again, none of them pid.
func (c *cluster) killWorker(pid, want int) {
	c.t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	c.waitFor(15*time.Second, "the killed worker replaced", func() bool {
		ready := c.readyPIDs()
		return len(ready) == want && !ready[pid]
	})
}

// Workers parse the file as the primary last accepted it, never the file
// itself: a bad edit without a reload reaches no worker started later
// (scaled up, restarted after a crash), so the cluster stays healthy and
// only the reload is refused; and a valid edit reaches none either until
// hybrid reload applies it.
func TestConfigSnapshotUntilReload(t *testing.T) {
	path := writeConfig(t, "max-body = 1KiB\n")
	c := startCluster(t, []string{"HYBRID_CONFIG=" + path}, 2, "--workers", "2")
	url := "http://" + c.addr + "/v1/hash/sha256"
	body := bytes.Repeat([]byte("x"), 2048)

	if err := os.WriteFile(path, []byte("max-body = 1KiB\npool-size = banana\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runHybrid(t, nil, "scale", "3", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid scale 3: exit %d, %q %q", code, out, errOut)
	}
	c.waitFor(15*time.Second, "3 workers ready with the banana file", func() bool { return len(c.readyPIDs()) == 3 })
	c.killWorker(firstKey(c.readyPIDs()), 3)
	if s := c.snapshot(); s.Circuit != "closed" || s.WorkersReady != 3 {
		t.Errorf("after a scale-up and a crash with a bad file: circuit %s, %d ready; want closed, 3", s.Circuit, s.WorkersReady)
	}
	if _, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin); code != 1 || !strings.Contains(errOut, path+":2: pool-size") {
		t.Errorf("hybrid reload with the banana file: exit %d, %q; want 1 naming %s:2", code, errOut, path)
	}

	// A valid edit: the workers restarted before the reload keep 1KiB.
	if out, errOut, code := runHybrid(t, nil, "scale", "1", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid scale 1: exit %d, %q %q", code, out, errOut)
	}
	c.waitFor(15*time.Second, "1 worker", func() bool { return len(c.snapshot().Workers) == 1 })
	if err := os.WriteFile(path, []byte("max-body = 4KiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.killWorker(firstKey(c.readyPIDs()), 1)
	if s := postFresh(t, url, body); s != http.StatusRequestEntityTooLarge {
		t.Errorf("POST 2KiB to a worker restarted after a valid edit, before any reload = %d; want 413 (the accepted 1KiB)", s)
	}
	before := c.readyPIDs()
	if out, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid reload with the valid edit: exit %d, %q %q", code, out, errOut)
	}
	c.waitLog("rolling reload complete", 15*time.Second)
	// "Complete" is the primary's word once the old worker is told to
	// drain; until it has closed its accept loop it may still take a
	// connection, so ask once it is gone.
	c.waitFor(15*time.Second, "the worker from before the reload to exit", func() bool {
		for pid := range before {
			if running(pid) {
				return false
			}
		}
		return true
	})
	if s := postFresh(t, url, body); s != 200 {
		t.Errorf("POST 2KiB after hybrid reload = %d; want 200 (the reloaded 4KiB)", s)
	}
	// The snapshot outlives the reload: the file may change again.
	if err := os.WriteFile(path, []byte("max-body = 1KiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.killWorker(firstKey(c.readyPIDs()), 1)
	if s := postFresh(t, url, body); s != 200 {
		t.Errorf("POST 2KiB to a worker restarted after the reload and another edit = %d; want 200 (the reloaded 4KiB)", s)
	}
}

// A FIFO at the configuration path does not freeze the primary: a reload
// is refused at once, in one line, and SIGTERM still stops it.
func TestConfigFIFOOnReload(t *testing.T) {
	path := writeConfig(t, "max-body = 1KiB\n")
	c := startCluster(t, []string{"HYBRID_CONFIG=" + path}, 1, "--workers", "1")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin)
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, path+": a FIFO, not a regular file") || out != "" {
		t.Errorf("hybrid reload with a FIFO: exit %d, stdout %q, stderr %q; want 1 and one line naming the FIFO", code, out, errOut)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hybrid reload with a FIFO took %v", d)
	}
	c.signal(syscall.SIGHUP)
	c.waitFor(5*time.Second, "the SIGHUP refused", func() bool { return len(c.logs.find("reload refused")) == 2 })
	c.signal(syscall.SIGTERM)
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("SIGTERM with a FIFO as the file: exit %d; want 0", code)
	}
}
