package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The release build (CGO_ENABLED=0 go build ./cmd/hybrid, no tags) has no
// test hook: no fault job, no test route, and the test switch is ignored.
func TestReleaseBinaryHasNoTestHooks(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hybrid")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("release build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"fault-header-panic", "lie-long-header", "kill-parent", "fault-sleeper", testHooksVar, "/_test/"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the release binary contains %q", s)
		}
	}
	// The switch set to a crash at start: a release worker ignores it.
	env, setFault := faultFile(t)
	setFault("crash")
	os.Chmod(filepath.Dir(bin), 0o755)
	c := launch(t, exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json",
		"--workers", "1"), env)
	t.Cleanup(c.cleanup)
	c.waitLog("primary starting", 10*time.Second)
	c.addr = c.logs.find("primary starting")[0]["addr"].(string)
	c.waitLog("admin endpoint listening", 10*time.Second)
	c.admin = c.logs.find("admin endpoint listening")[0]["admin_addr"].(string)
	c.waitFor(15*time.Second, "a ready worker despite the crash switch", func() bool { return len(c.readyPIDs()) == 1 })
	if r := post(t, "http://"+c.addr+"/_test/isolate/panic", nil); r.status != 404 {
		t.Errorf("POST /_test/isolate/panic on the release binary = %d %s; want 404", r.status, r.body)
	}
}
