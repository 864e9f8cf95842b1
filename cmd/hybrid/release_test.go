package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	c := startClusterCmd(t, serveCmd(bin, "--workers", "1"), env, 1) // ready despite the crash switch
	if r := post(t, "http://"+c.addr+"/_test/isolate/panic", nil); r.status != 404 {
		t.Errorf("POST /_test/isolate/panic on the release binary = %d %s; want 404", r.status, r.body)
	}
}
