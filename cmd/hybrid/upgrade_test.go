package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// upgradeVersion is what the second build of the upgrade tests reports
// (-ldflags -X procpool.Version); the harness's build reports the module's.
const upgradeVersion = "v0.0.0-upgrade-test-b"

// secondDir holds the second build; TestMain removes it.
var secondDir string

var secondBuild = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "hybrid-test-b-")
	if err != nil {
		return "", err
	}
	secondDir = dir
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "hybrid")
	args := append([]string{"build", "-tags", "testhooks", "-o", bin,
		"-ldflags", "-X github.com/hybrid-server/hybrid/procpool.Version=" + upgradeVersion}, buildFlags...)
	build := exec.Command("go", append(args, ".")...)
	cgo := "CGO_ENABLED=0"
	if len(buildFlags) > 0 {
		cgo = "CGO_ENABLED=1"
	}
	build.Env = append(os.Environ(), cgo)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the second hybrid: %v: %s", err, out)
	}
	return bin, nil
})

// flip points the symlink link at target, atomically, as a deploy does.
func flip(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// running reports whether pid is a live process (not gone, not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// seenPIDs is every primary and worker the cluster's log names.
func (c *cluster) seenPIDs() map[int]string {
	pids := map[int]string{}
	for _, m := range c.logs.find("primary starting") {
		if pid, ok := m["pid"].(float64); ok {
			pids[int(pid)] = "primary"
		}
	}
	for _, m := range c.logs.find("worker starting") {
		if pid, ok := m["worker_pid"].(float64); ok {
			pids[int(pid)] = "worker"
		}
	}
	return pids
}

// killSeen ends every process the cluster's log names, by pid: after an
// upgrade the primary is no longer the harness's child.
func (c *cluster) killSeen() {
	for pid := range c.seenPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// upgradeTo sends SIGUSR2 to the primary and waits until a new primary of
// version want and its workers serve and the old primary has exited.
func (c *cluster) upgradeTo(want string, workers int) (newPID int) {
	c.t.Helper()
	old := c.snapshot().PrimaryPID
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		c.t.Fatalf("SIGUSR2 to %d: %v", old, err)
	}
	c.waitFor(30*time.Second, fmt.Sprintf("a new primary of version %s after %d", want, old), func() bool {
		s := c.snapshotOrNil()
		if s == nil || s.PrimaryPID == old || s.Version != want || s.Upgrading || s.WorkersReady != workers {
			return false
		}
		for _, w := range s.Workers {
			if w.Version != want {
				return false
			}
		}
		newPID = s.PrimaryPID
		return true
	})
	c.waitFor(30*time.Second, fmt.Sprintf("the old primary %d to exit", old), func() bool { return !running(old) })
	return newPID
}

// openFDs counts pid's descriptors once the harness's idle admin
// connections are closed (they sit in whichever primary accepted them).
func openFDs(pid int) int {
	adminClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	return fdCount(pid)
}

// pipeFDs counts pid's descriptors that are pipes.
func pipeFDs(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n
}

// 20 upgrades alternating two builds, and 20 config reloads (each changes
// the pool size in the --config file), under 64 keep-alive
// connections sending GETs and POSTs: no request fails, no process is left
// behind, the last primary holds no more descriptors than the first, and
// /cluster shows the last build's version. Then a build whose workers
// crash at start, and one that exits at once, roll back: the old primary
// keeps serving, still without a failed request.
func TestUpgradeUnderLoad(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	upgrades := 20
	if testing.Short() {
		upgrades = 6
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binPath)
	env, setFault := faultFile(t)
	// The reloads are config reloads: each changes a worker-level setting
	// in the --config file, which the new workers take.
	conf := filepath.Join(t.TempDir(), "hybrid.conf")
	setPool := func(n int) {
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("# written by the test\npool-size = %d\n", n)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setPool(2)
	c := startClusterCmd(t, serveCmd(link, append([]string{"--config", conf}, drainFlags...)...), env, 2)
	t.Cleanup(c.killSeen)
	first := c.snapshot()
	versionA := first.Version
	if versionA == upgradeVersion || first.Binary != link {
		t.Fatalf("first primary: version %q, binary %q; want a version other than %q and binary %q", versionA, first.Binary, upgradeVersion, link)
	}
	fds0 := openFDs(first.PrimaryPID)

	l := drainLoad(c.addr)
	start := time.Now()
	var upgradeTime time.Duration
	pid := first.PrimaryPID
	for i := range upgrades {
		target, want := binB, upgradeVersion
		if i%2 == 1 {
			target, want = binPath, versionA
		}
		flip(t, link, target)
		t0 := time.Now()
		pid = c.upgradeTo(want, 2)
		upgradeTime += time.Since(t0)

		setPool(2 + i%2)
		c.reloadPID(pid, 2)
	}
	took := time.Since(start)
	// Every worker now runs with the last file's pool size.
	wantPool := 2 + (upgrades-1)%2 // 3: the file at start said 2
	for range 10 {
		var h struct {
			Pool struct {
				Capacity int `json:"capacity"`
			} `json:"pool"`
		}
		if _, err := getJSON(freshClient(), "http://"+c.addr+"/health", &h); err != nil || h.Pool.Capacity != wantPool {
			t.Errorf("after the last config reload a worker's pool capacity is %d (%v); want %d", h.Pool.Capacity, err, wantPool)
			break
		}
	}
	final := c.snapshot()
	wantFinal := upgradeVersion
	if upgrades%2 == 0 {
		wantFinal = versionA
	}
	if final.Version != wantFinal || final.PrimaryPID != pid || final.LastUpgrade == nil || final.LastUpgrade.Result != procpool.UpgradeSucceeded {
		t.Errorf("after %d upgrades: version %q, pid %d, last upgrade %+v; want %q, %d, succeeded", upgrades, final.Version, final.PrimaryPID, final.LastUpgrade, wantFinal, pid)
	}
	if fds := openFDs(pid); fds > fds0 {
		t.Errorf("the primary after %d upgrades holds %d descriptors, the first held %d: a leak", upgrades, fds, fds0)
	} else {
		t.Logf("descriptors: first primary %d, primary after %d upgrades %d", fds0, upgrades, fds)
	}

	// Rollbacks: workers that crash at start, then a binary that exits.
	// The same primary's descriptors before them, to compare with after.
	fdsBefore, pipesBefore := openFDs(pid), pipeFDs(pid)
	setFault("crash")
	c.signal0(pid, syscall.SIGUSR2)
	c.waitFor(30*time.Second, "the crashing build's rollback", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.LastUpgrade != nil && s.LastUpgrade.Result == procpool.UpgradeRolledBack && !s.Upgrading
	})
	setFault("")
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho broken build >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	flip(t, link, broken)
	c.signal0(pid, syscall.SIGUSR2)
	c.waitFor(30*time.Second, "the exiting build's rollback", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.LastUpgrade != nil && strings.Contains(s.LastUpgrade.Reason, "exit status 1") && !s.Upgrading
	})
	time.Sleep(200 * time.Millisecond)
	r := l.stop()
	after := c.snapshot()
	t.Logf("%d upgrades (%v each on average) and %d config reloads in %v under 64 keep-alive connections, then 2 rollbacks: %v",
		upgrades, (upgradeTime / time.Duration(upgrades)).Round(time.Millisecond), upgrades, took.Round(time.Millisecond), r)
	t.Logf("last rollback: %+v", *after.LastUpgrade)
	if after.PrimaryPID != pid || after.WorkersReady != 2 || after.Version != wantFinal {
		t.Errorf("after the rollbacks: primary %d, %d ready, version %q; want %d, 2, %q", after.PrimaryPID, after.WorkersReady, after.Version, pid, wantFinal)
	}
	if r.failed != 0 {
		t.Errorf("%d requests failed; want 0: %v", r.failed, r.errs)
	}
	// The socket never closes during an upgrade or a rollback: a connect
	// that fails is a failure too, though no request was written on it.
	if r.dialErrs != 0 {
		t.Errorf("%d connects failed; want 0: %v", r.dialErrs, r.errs)
	}
	// The rollbacks' pipes and listener copies are closed too: the same
	// primary holds no more descriptors, and no more pipes, than before.
	if fds, pipes := openFDs(pid), pipeFDs(pid); fds > fdsBefore || pipes > pipesBefore {
		t.Errorf("after the 2 rollbacks the primary holds %d descriptors (%d pipes), before them %d (%d pipes): a leak",
			fds, pipes, fdsBefore, pipesBefore)
	} else {
		t.Logf("descriptors: first primary %d; the last %d (%d pipes) before the rollbacks, %d (%d pipes) after", fds0, fdsBefore, pipesBefore, fds, pipes)
	}
	if r.ok < int64(upgrades)*100 {
		t.Errorf("only %d requests succeeded; the load did not run", r.ok)
	}

	// No orphan: of every process the log names, only the last primary and
	// its two workers run, and the primary has no other child.
	live := map[int]bool{pid: true}
	for _, w := range after.Workers {
		live[w.PID] = true
	}
	for p, role := range c.seenPIDs() {
		if running(p) && !live[p] {
			t.Errorf("%s %d still runs", role, p)
		}
	}
	if kids, zombies := children(pid); len(kids) != 2 || zombies != 0 {
		t.Errorf("the primary has children %v (%d zombies); want its 2 workers", kids, zombies)
	}
}

// reloadPID sends SIGHUP to primary pid and waits for the reload it starts
// to complete.
func (c *cluster) reloadPID(pid, workers int) {
	c.t.Helper()
	done := len(c.logs.find("rolling reload complete"))
	c.signal0(pid, syscall.SIGHUP)
	c.waitFor(20*time.Second, "the reload to complete", func() bool {
		if len(c.logs.find("rolling reload complete")) == done {
			return false
		}
		s := c.snapshotOrNil()
		return s != nil && !s.Reloading && s.WorkersReady == workers && len(s.Workers) == workers
	})
}

// signal0 signals a primary the harness did not start itself.
func (c *cluster) signal0(pid int, sig syscall.Signal) {
	c.t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		c.t.Fatalf("signal %v to %d: %v", sig, pid, err)
	}
}

// A second upgrade while one runs is refused; a new primary whose worker
// is not ready within --start-timeout is rolled back; the next upgrade
// succeeds.
func TestUpgradeRefusesASecondAndTimesOut(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binB)
	env, setFault := faultFile(t)
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "1", "--binary", link, "--start-timeout", "2s"), env, 1)
	t.Cleanup(c.killSeen)
	old := c.snapshot().PrimaryPID
	setFault("slow") // the new primary's worker never becomes ready
	c.signal(syscall.SIGUSR2)
	c.waitLog("upgrade: new primary starting", 10*time.Second)
	// Only the old primary answers on the admin socket meanwhile, and says so.
	c.waitFor(time.Second, "/cluster to show upgrading", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.Upgrading && s.PrimaryPID == old
	})
	c.signal(syscall.SIGUSR2)
	if line := c.waitLog("SIGUSR2 ignored", 10*time.Second); !strings.Contains(fmt.Sprint(line["err"]), "an upgrade is running") {
		t.Errorf("second SIGUSR2: %v; want it refused because an upgrade is running", line["err"])
	}
	c.waitFor(15*time.Second, "the rollback", func() bool {
		s := c.snapshotOrNil()
		return s != nil && !s.Upgrading && s.LastUpgrade != nil && s.LastUpgrade.Result == procpool.UpgradeRolledBack
	})
	s := c.snapshot()
	t.Logf("rollback: %+v", *s.LastUpgrade)
	if s.PrimaryPID != old || s.WorkersReady != 1 || !strings.Contains(s.LastUpgrade.Reason, "start timeout") {
		t.Errorf("after the rollback: primary %d, %d ready, reason %q; want %d, 1, the start timeout", s.PrimaryPID, s.WorkersReady, s.LastUpgrade.Reason, old)
	}
	setFault("")
	c.upgradeTo(upgradeVersion, 1)
	if n := len(c.logs.find("upgrade: new primary starting")); n != 2 {
		t.Errorf("%d new primaries started; want 2", n)
	}
}

// As PID 1 (a container) the primary refuses to upgrade: it cannot exit
// and leave the namespace to another. It says so in the log and in
// /cluster, and keeps serving.
func TestUpgradeRefusedAsPID1(t *testing.T) {
	for _, tool := range []string{"unshare"} {
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
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-c.exit
		if t.Failed() {
			t.Logf("hybrid log:\n%s", c.logs.String())
		}
	})
	c.addr = c.waitLog("primary starting", 10*time.Second)["addr"].(string)
	c.admin = c.waitLog("admin endpoint listening", 10*time.Second)["admin_addr"].(string)
	c.waitFor(15*time.Second, "1 worker ready", func() bool { return len(c.readyPIDs()) == 1 })
	var primary int
	for pid := range hostChildren(cmd.Process.Pid) {
		primary = pid
	}
	syscall.Kill(primary, syscall.SIGUSR2)
	line := c.waitLog("upgrade refused", 10*time.Second)
	// The line is logged before the snapshot is published.
	c.waitFor(5*time.Second, "/cluster to show the refusal", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.LastUpgrade != nil
	})
	s := c.snapshot()
	if s.PrimaryPID != 1 || s.LastUpgrade == nil || s.LastUpgrade.Result != procpool.UpgradeRefused || s.WorkersReady != 1 {
		t.Errorf("after SIGUSR2 as PID 1: pid %d, last upgrade %+v, %d ready; want 1, refused, 1", s.PrimaryPID, s.LastUpgrade, s.WorkersReady)
	}
	t.Logf("refusal: %v", line["reason"])
	if code, err := getJSON(freshClient(), "http://"+c.addr+"/health", nil); err != nil || code != http.StatusOK {
		t.Errorf("GET /health after the refusal = %d, %v; want 200", code, err)
	}
	if !strings.Contains(fmt.Sprint(line["reason"]), "rolling update") {
		t.Errorf("refusal %q does not point to the orchestrator's rolling update", line["reason"])
	}
}

// With --listen-mode reuseport the old primary hands over its reservation
// of the port, and the new workers bind their own SO_REUSEPORT sockets on
// it.
func TestUpgradeReusePort(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binB)
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "2", "--listen-mode", "reuseport", "--binary", link), nil, 2)
	t.Cleanup(c.killSeen)
	pid := c.upgradeTo(upgradeVersion, 2)
	if code, err := getJSON(freshClient(), "http://"+c.addr+"/health", nil); err != nil || code != http.StatusOK {
		t.Errorf("GET /health after a reuseport upgrade = %d, %v", code, err)
	}
	c.signal0(pid, syscall.SIGUSR2) // same mode: a second upgrade works too
	c.waitFor(30*time.Second, "the second upgrade", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.PrimaryPID != pid && s.WorkersReady == 2 && !s.Upgrading
	})
}

// hybrid upgrade, the client: exit 0 once the new primary serves, and 1
// with the rollback's reason on one line when the new build cannot start.
func TestClientUpgrade(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binPath)
	c := startClusterCmd(t, serveCmd(link, "--workers", "1"), nil, 1)
	t.Cleanup(c.killSeen)
	flip(t, link, binB)
	out, errOut, code := runHybrid(t, nil, "upgrade", "--admin-addr", c.admin)
	if code != 0 {
		t.Fatalf("hybrid upgrade: exit %d, stdout %q, stderr %q; want 0", code, out, errOut)
	}
	// The old primary may answer on the admin socket a moment longer.
	var s procpool.Snapshot
	c.waitFor(10*time.Second, "the new primary's version "+upgradeVersion, func() bool {
		p := c.snapshotOrNil()
		if p != nil {
			s = *p
		}
		return p != nil && p.Version == upgradeVersion
	})
	pid := s.PrimaryPID
	// The next upgrade waits for the old primary's exit: until then it is
	// refused (TestUpgradeStormIsBounded).
	c.waitFor(15*time.Second, "the old primary to exit", func() bool { return !running(s.LastUpgrade.OldPID) })
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	flip(t, link, broken)
	out, errOut, code = runHybrid(t, nil, "upgrade", "--admin-addr", c.admin)
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "exit status 1") {
		t.Errorf("hybrid upgrade to a broken build: exit %d, stdout %q, stderr %q; want 1 and one line with the reason", code, out, errOut)
	}
	if s := c.snapshot(); s.PrimaryPID != pid || s.WorkersReady != 1 {
		t.Errorf("after the rollback: primary %d with %d ready; want %d serving", s.PrimaryPID, s.WorkersReady, pid)
	}
}

// groupMembers returns the live (not zombie) processes of process group
// pgid.
func groupMembers(pgid int) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:])) // state ppid pgrp …
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// portsFree checks that nothing holds the cluster's or the admin's port:
// a fresh listener binds each.
func portsFree(t *testing.T, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen on %s after the primary exited: %v; a process of the upgrade still holds it", addr, err)
			continue
		}
		ln.Close()
	}
}

// An upgrade to a wrapper script that never starts hybrid (its shell and
// its sleep both ignore SIGTERM): the rollback kills the whole process
// group, shell and sleep, which hold both inherited sockets. Then a SIGTERM
// to the primary in the middle of a second such upgrade: the primary
// exits only once the new one's group is gone, and leaves both ports free.
func TestUpgradeRollbackLeavesNoOrphan(t *testing.T) {
	wrapper := filepath.Join(t.TempDir(), "hybrid-wrapper")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\ntrap '' TERM\nsleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "1", "--binary", wrapper, "--start-timeout", "2s"), nil, 1)
	t.Cleanup(c.killSeen)
	var groups []int
	t.Cleanup(func() {
		for _, g := range groups {
			syscall.Kill(-g, syscall.SIGKILL)
		}
	})
	newPrimary := func(n int) int {
		c.waitFor(10*time.Second, fmt.Sprintf("new primary %d to start", n), func() bool {
			return len(c.logs.find("upgrade: new primary starting")) >= n
		})
		pid := int(c.logs.find("upgrade: new primary starting")[n-1]["new_primary_pid"].(float64))
		groups = append(groups, pid)
		c.waitFor(5*time.Second, "the wrapper's sleep", func() bool { return len(groupMembers(pid)) == 2 })
		return pid
	}

	c.signal(syscall.SIGUSR2)
	first := newPrimary(1)
	c.waitFor(15*time.Second, "the rollback", func() bool {
		s := c.snapshotOrNil()
		return s != nil && !s.Upgrading && s.LastUpgrade != nil && s.LastUpgrade.Result == procpool.UpgradeRolledBack
	})
	if left := groupMembers(first); len(left) != 0 {
		t.Errorf("after the rollback, processes %v of the new primary's group %d still run", left, first)
	}

	c.signal(syscall.SIGUSR2)
	second := newPrimary(2)
	t0 := time.Now()
	c.signal(syscall.SIGTERM)
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("primary exited %d on SIGTERM mid-upgrade; want 0", code)
	}
	t.Logf("SIGTERM mid-upgrade: the primary exited after %v", time.Since(t0).Round(time.Millisecond))
	if left := groupMembers(second); len(left) != 0 {
		t.Errorf("after the primary exited, processes %v of the new primary's group %d still run", left, second)
	}
	portsFree(t, c.addr, c.admin)
}

// An upgrade to a build whose workers never become ready (the test hook
// "slow"): meanwhile every /cluster answer is the old primary's, and a
// POST /pool changes the old primary's workers. Then SIGTERM to the old
// primary: it rolls the upgrade back and exits, and within a few seconds
// no process of either primary is left and both ports are free.
func TestUpgradeSlowBuildShutdown(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binB)
	env, setFault := faultFile(t)
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "2", "--binary", link), env, 2)
	t.Cleanup(c.killSeen)
	old := c.snapshot().PrimaryPID
	setFault("slow")
	c.signal(syscall.SIGUSR2)
	c.waitFor(15*time.Second, "the new primary's workers to start", func() bool {
		return len(c.logs.find("test hook: never becoming ready")) == 2
	})
	client := freshClient() // a connection per request: each is accepted anew
	for i := range 24 {
		var s procpool.Snapshot
		if code, err := getJSON(client, "http://"+c.admin+"/cluster", &s); err != nil || code != http.StatusOK {
			t.Fatalf("GET /cluster during the upgrade = %d, %v", code, err)
		}
		if s.PrimaryPID != old || !s.Upgrading {
			t.Errorf("GET /cluster %d during the upgrade: answered by primary %d (upgrading %v); want the old one, %d", i, s.PrimaryPID, s.Upgrading, old)
		}
	}
	adminClient.CloseIdleConnections()
	if code, body := postPool(t, c.admin, 3); code/100 != 2 {
		t.Errorf("POST /pool during the upgrade = %d %s; want 2xx", code, body)
	} else if s := c.snapshot(); s.PrimaryPID != old || s.PoolSize != 3 {
		t.Errorf("after POST /pool: primary %d, pool size %d; want %d, 3", s.PrimaryPID, s.PoolSize, old)
	}

	t0 := time.Now()
	c.signal(syscall.SIGTERM)
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("primary exited %d on SIGTERM mid-upgrade; want 0", code)
	}
	c.waitFor(5*time.Second, "every process of both primaries to exit", func() bool {
		for pid := range c.seenPIDs() {
			if running(pid) {
				return false
			}
		}
		return true
	})
	t.Logf("SIGTERM mid-upgrade: all gone %v later", time.Since(t0).Round(time.Millisecond))
	portsFree(t, c.addr, c.admin)
}

// Ten upgrades asked for in a row, each with a request left open (a 60 s
// sleep) on the workers it would replace. Before, each hand-over left its
// old primary draining for up to --shutdown-timeout, so N quick upgrades
// left N old primaries and their workers alive. Now an upgrade asked of a
// primary whose old primary still drains is refused (409, and hybrid
// upgrade exits 1 saying why): at most two primaries run, each with its
// workers. Once the old one has exited (its 60 s request cut at the
// shutdown timeout), the next upgrade goes through.
func TestUpgradeStormIsBounded(t *testing.T) {
	const workers, upgrades = 1, 10
	c := startCluster(t, []string{testHooksVar + "=/nonexistent"}, workers,
		"--workers", strconv.Itoa(workers), "--shutdown-timeout", "5s")
	t.Cleanup(c.killSeen)
	var conns []net.Conn
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	peak, peakPrimaries := 0, 0
	sample := func() {
		n, primaries := 0, 0
		for pid, role := range c.seenPIDs() {
			if running(pid) && !exiting(pid) {
				n++
				if role == "primary" {
					primaries++
				}
			}
		}
		peak, peakPrimaries = max(peak, n), max(peakPrimaries, primaries)
	}
	ok, refused := 0, 0
	var refusal string
	start := time.Now()
	for range upgrades {
		conn, err := net.Dial("tcp", c.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		fmt.Fprintf(conn, "GET /_test/sleep?ms=60000 HTTP/1.1\r\nHost: hybrid\r\n\r\n")
		time.Sleep(50 * time.Millisecond) // a worker has taken it
		_, errOut, code := runHybrid(t, nil, "upgrade", "--admin-addr", c.admin)
		switch {
		case code == 0:
			ok++
		case code == 1 && strings.Contains(errOut, "still drains its workers"):
			refused++
			refusal = errOut
		default:
			t.Errorf("hybrid upgrade: exit %d, %q; want 0, or 1 and the previous primary still draining", code, errOut)
		}
		sample()
	}
	stormTook := time.Since(start)
	for range 10 {
		sample()
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d upgrades asked for in %v, a request left open before each: %d done, %d refused (%q); peak %d hybrid processes, %d of them primaries",
		upgrades, stormTook.Round(time.Millisecond), ok, refused, strings.TrimSpace(refusal), peak, peakPrimaries)
	if ok < 1 || refused < 1 || strings.Count(refusal, "\n") != 1 {
		t.Errorf("%d upgrades done, %d refused with %q; want at least one of each, the refusal on one line", ok, refused, refusal)
	}
	if bound := 2 * (1 + workers); peak > bound || peakPrimaries > 2 {
		t.Errorf("peak %d hybrid processes, %d primaries; want at most %d: two primaries, each with its workers", peak, peakPrimaries, bound)
	}

	// Once the old primary has exited, an upgrade goes through again.
	s := c.snapshot()
	if s.LastUpgrade == nil || s.LastUpgrade.Result != procpool.UpgradeSucceeded {
		t.Fatalf("last upgrade %+v; want a success", s.LastUpgrade)
	}
	old := s.LastUpgrade.OldPID
	c.waitFor(15*time.Second, "the old primary to exit", func() bool { return !running(old) })
	if _, errOut, code := runHybrid(t, nil, "upgrade", "--admin-addr", c.admin); code != 0 {
		t.Errorf("hybrid upgrade once the old primary %d has exited: exit %d, %q; want 0", old, code, errOut)
	}
	if now := c.snapshot(); now.PrimaryPID == s.PrimaryPID {
		t.Errorf("primary %d after that upgrade; want a new one", now.PrimaryPID)
	}
}

// With a unix admin socket (--admin-addr unix:PATH), two upgrades in turn:
// each new primary inherits the socket, which stays in place, mode 0600,
// and hybrid status over it reaches the new primary once the old one has
// exited; when the last primary exits, the socket's file goes with it.
func TestUpgradeUnixAdminSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "hybrid-admin-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "admin.sock")
	env := []string{"HYBRID_ADMIN_ADDR=unix:" + sock}
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "1", "--admin-addr", "unix:"+sock), nil, 0)
	t.Cleanup(c.killSeen)
	status := func() (s procpool.Snapshot) {
		out, errOut, code := runHybrid(t, env, "status", "--json")
		if code != 0 || json.Unmarshal([]byte(out), &s) != nil {
			t.Logf("hybrid status --json over %s: exit %d, %q", sock, code, errOut)
		}
		return s
	}
	c.waitFor(15*time.Second, "a ready worker", func() bool { return status().WorkersReady == 1 })
	pid := c.cmd.Process.Pid
	for i := range 2 {
		if _, errOut, code := runHybrid(t, env, "upgrade"); code != 0 {
			t.Fatalf("upgrade %d over the unix socket: exit %d, %q", i+1, code, errOut)
		}
		old := pid
		c.waitFor(15*time.Second, fmt.Sprintf("the old primary %d to exit", old), func() bool { return !running(old) })
		s := status()
		pid = s.PrimaryPID
		if pid == old || pid == 0 || s.WorkersReady != 1 {
			t.Fatalf("after upgrade %d hybrid status over the socket shows primary %d with %d ready; want a new one, not %d", i+1, pid, s.WorkersReady, old)
		}
		fi, err := os.Stat(sock)
		if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("after upgrade %d and the old primary's exit, the admin socket: %v, %v; want a socket of mode 0600", i+1, fi, err)
		}
	}
	c.signal0(pid, syscall.SIGTERM)
	c.waitFor(15*time.Second, "the last primary to exit", func() bool { return !running(pid) })
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket after the last primary exited: %v; want it removed", err)
	}
}

// A primary-level setting changed in the --config file (workers = 2, then
// 3) is applied by an upgrade: the new primary reads the file again and
// runs 3 workers. (A reload leaves it, and says so in the log:
// TestInvalidConfigOnReload.)
func TestUpgradeAppliesPrimarySettings(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "hybrid.conf")
	if err := os.WriteFile(conf, []byte("workers = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, nil, 2, "--config", conf)
	t.Cleanup(c.killSeen)
	old := c.snapshot()
	if old.WorkersWanted != 2 {
		t.Fatalf("workers_wanted %d with workers = 2 in the file; want 2", old.WorkersWanted)
	}
	if err := os.WriteFile(conf, []byte("workers = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runHybrid(t, nil, "upgrade", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid upgrade: exit %d, %q", code, errOut)
	}
	// The old primary may answer on the admin socket a moment longer.
	c.waitFor(10*time.Second, "the new primary, with 3 of 3 workers ready", func() bool {
		s := c.snapshotOrNil()
		return s != nil && s.PrimaryPID != old.PrimaryPID && s.WorkersWanted == 3 && s.WorkersReady == 3
	})
}

// HYBRID_POOL_SIZE is --pool-size's variable, which the primary passes on
// to its workers: it is not mistaken for the pool size set at run time.
func TestPoolSizeFromEnvironment(t *testing.T) {
	c := startCluster(t, []string{"HYBRID_POOL_SIZE=3"}, 1, "--workers", "1")
	var h struct {
		Pool struct {
			Capacity int `json:"capacity"`
		} `json:"pool"`
	}
	if _, err := getJSON(freshClient(), "http://"+c.addr+"/health", &h); err != nil || h.Pool.Capacity != 3 {
		t.Errorf("with HYBRID_POOL_SIZE=3 a worker's pool capacity is %d (%v); want 3", h.Pool.Capacity, err)
	}
}
