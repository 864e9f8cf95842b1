package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostChildren lists the processes whose parent is ppid, from the host's
// /proc: pid → state (R, S, Z, …) and command name.
func hostChildren(ppid int) map[int]string {
	kids := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		f := bytes.Fields(b[end+1:])
		if open < 0 || len(f) < 2 {
			continue
		}
		if p, _ := strconv.Atoi(string(f[1])); p == ppid {
			kids[pid] = string(f[0]) + " " + string(b[open+1:end])
		}
	}
	return kids
}

// As PID 1 (the container case), the primary reaps the orphans it inherits
// and leaves its own workers to their supervisor. Run in a fresh user and
// PID namespace, as a container runtime would start it; an orphan is made in
// that namespace with nsenter.
func TestPID1ReapsOrphans(t *testing.T) {
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED LOUDLY: %s (util-linux) not found: %v", tool, err)
		}
	}
	if out, err := exec.Command("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED LOUDLY: this kernel refuses an unprivileged user+PID namespace (%v: %s)", err, out)
	}
	cmd := exec.Command("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child",
		binPath, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json", "--workers", "1")
	c := launch(t, cmd, nil)
	// Not c.cleanup: the logged worker pids are the namespace's, not the
	// host's. SIGKILL to unshare makes it (--kill-child) SIGKILL the
	// namespace's PID 1, and the kernel then kills everything in it.
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-c.exit:
		case <-time.After(10 * time.Second):
			t.Errorf("unshare did not exit after SIGKILL")
		}
		if t.Failed() {
			t.Logf("hybrid log:\n%s", c.logs.String())
		}
	})
	c.waitLog("running as PID 1", 10*time.Second)
	c.waitLog("admin endpoint listening", 10*time.Second)
	c.admin = c.logs.find("admin endpoint listening")[0]["admin_addr"].(string)
	c.waitFor(15*time.Second, "1 worker ready", func() bool { return len(c.readyPIDs()) == 1 })
	if s := c.snapshot(); s.PrimaryPID != 1 {
		t.Fatalf("primary pid %d in its namespace; want 1", s.PrimaryPID)
	}

	// The primary's host pid: unshare's only child.
	var primary int
	for pid := range hostChildren(cmd.Process.Pid) {
		primary = pid
	}
	if primary == 0 {
		t.Fatal("no child of unshare found")
	}

	// sh starts a 2 s sleep in the background (off its output pipe) and exits: the sleep is an
	// orphan of the namespace, and its parent becomes the primary.
	enter := exec.Command("nsenter", "--target", strconv.Itoa(primary), "--user", "--pid", "--preserve-credentials",
		"--", "sh", "-c", "sleep 2 </dev/null >/dev/null 2>&1 & echo $!")
	out, err := enter.CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	var orphan int
	c.waitFor(5*time.Second, "the orphan's parent to be the primary", func() bool {
		for pid, st := range hostChildren(primary) {
			if strings.HasSuffix(st, " sleep") {
				orphan = pid
				return true
			}
		}
		return false
	})
	t.Logf("orphan sleep: host pid %d (namespace pid %s), parent: the primary, host pid %d", orphan, bytes.TrimSpace(out), primary)

	// Once it exits it must be reaped, not left a zombie.
	c.waitFor(10*time.Second, fmt.Sprintf("orphan %d reaped", orphan), func() bool {
		_, alive := hostChildren(primary)[orphan]
		return !alive
	})
	// The worker is untouched: still the same ready worker, and no crash.
	s := c.snapshot()
	if s.WorkersReady != 1 || s.CrashesInWindow != 0 || s.Forks != 1 {
		t.Errorf("after reaping: %d ready, %d crashes, %d forks; want 1, 0, 1", s.WorkersReady, s.CrashesInWindow, s.Forks)
	}

	// SIGTERM to the namespace's PID 1 still drains and exits 0.
	syscall.Kill(primary, syscall.SIGTERM)
	select {
	case <-c.exit:
	case <-time.After(15 * time.Second):
		t.Fatal("primary did not exit within 15s of SIGTERM")
	}
	if code := c.state.ExitCode(); code != 0 {
		t.Errorf("unshare exit %d; want 0 (the primary's)", code)
	}
}
