//go:build linux

package isolate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests use the host's real cgroup v1 memory and pids hierarchies, as
// root; elsewhere they skip, saying so.

// testLimiterLog logs into the test's output.
func testLimiterLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// v1Pool returns a v1 limiter with memLimit, or skips the test.
func v1Pool(t testing.TB, memLimit uint64) (*cgroupPool, *cgroupV1) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: not root: the real cgroup v1 tests and benchmarks need root")
	}
	c, why := findV1()
	if c == nil {
		t.Skipf("SKIPPED: no cgroup v1 memory and pids hierarchy here: %s", why)
	}
	l, why := probeV1(testLimiterLog(t), memLimit, maxTasks)
	if l == nil {
		t.Skipf("SKIPPED: cgroup v1 not writable here: %s", why)
	}
	p := l.(*cgroupPool)
	t.Cleanup(p.Close)
	return p, c
}

// ourV1Dirs counts this process's isolate cgroups in base.
func ourV1Dirs(t testing.TB, base string) int {
	dirs, err := filepath.Glob(filepath.Join(base, fmt.Sprintf("hybrid-isolate-%d-*", os.Getpid())))
	if err != nil {
		t.Fatal(err)
	}
	return len(dirs)
}

func TestCgroupV1PoolReusesBoundedDirectories(t *testing.T) {
	p, c := v1Pool(t, 64<<20)
	const workers, rounds = 4, 50
	var mu sync.Mutex
	most := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				s, err := p.Take()
				if err != nil {
					t.Error(err)
					return
				}
				n := ourV1Dirs(t, c.memBase)
				mu.Lock()
				most = max(most, n)
				mu.Unlock()
				s.Release()
			}
		})
	}
	wg.Wait()
	// A directory is made only when none is idle, so there are never more
	// than slots out at once.
	if most > workers {
		t.Errorf("%d takes by %d goroutines: up to %d cgroup directories; want ≤ %d", workers*rounds, workers, most, workers)
	}
	t.Logf("%d takes by %d goroutines: at most %d cgroup directories", workers*rounds, workers, most)

	// More out at once than the pool keeps idle: the surplus is removed.
	var slots []cgroupSlot
	for range maxIdle + 4 {
		s, err := p.Take()
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	if n := ourV1Dirs(t, c.memBase); n != maxIdle+4 {
		t.Errorf("%d slots out: %d directories; want %d", maxIdle+4, n, maxIdle+4)
	}
	d := slots[0].(*slot).d.(*cgroupV1Dir)
	for _, f := range []string{filepath.Join(d.mem, "memory.limit_in_bytes"), filepath.Join(d.pids, "pids.max")} {
		checkRootOnly(t, f)
	}
	if v := readTrimmed(t, filepath.Join(d.mem, "memory.limit_in_bytes")); v != strconv.Itoa(64<<20) {
		t.Errorf("memory.limit_in_bytes = %s; want %d", v, 64<<20)
	}
	if v := readTrimmed(t, filepath.Join(d.pids, "pids.max")); v != strconv.Itoa(maxTasks) {
		t.Errorf("pids.max = %s; want %d", v, maxTasks)
	}
	for _, s := range slots {
		s.Release()
		s.Release() // a second Release does nothing
	}
	if n := ourV1Dirs(t, c.memBase); n != maxIdle {
		t.Errorf("all released: %d directories; want %d idle", n, maxIdle)
	}

	s, err := p.Take()
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if n := ourV1Dirs(t, c.memBase); n != 1 {
		t.Errorf("closed, one slot out: %d directories; want 1", n)
	}
	s.Release()
	for _, base := range []string{c.memBase, c.pidsBase} {
		if n := ourV1Dirs(t, base); n != 0 {
			t.Errorf("closed: %d directories left in %s; want 0", n, base)
		}
	}
	if _, err := p.Take(); !errors.Is(err, errLimiterClosed) {
		t.Errorf("Take after Close: %v; want %v", err, errLimiterClosed)
	}
}

func readTrimmed(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// checkRootOnly fails unless file is root's and only root may write it, so
// that a child under another uid cannot raise its own limits.
func checkRootOnly(t *testing.T, file string) {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
		t.Errorf("%s: uid %d mode %v; want root's, writable by root only", file, st.Uid, fi.Mode().Perm())
	}
}

// helperEnv selects TestCgroupHelperProcess's behaviour in a child.
const helperEnv = "HYBRID_CGROUP_TEST_HELPER"

// TestCgroupHelperProcess is not a test: it is the child the cgroup tests
// start (this test binary, re-executed). "alloc:N" waits for stdin's EOF
// (until it is in its cgroup), then allocates and touches N bytes.
func TestCgroupHelperProcess(t *testing.T) {
	mode, ok := os.LookupEnv(helperEnv)
	if !ok {
		t.Skip("the child of the cgroup tests")
	}
	n, err := strconv.Atoi(strings.TrimPrefix(mode, "alloc:"))
	if err != nil {
		os.Exit(2)
	}
	io.Copy(io.Discard, os.Stdin)
	b := make([]byte, n)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	helperSink = b
	os.Exit(0)
}

var helperSink []byte

func TestCgroupV1OOMKillIsReportedOnce(t *testing.T) {
	p, _ := v1Pool(t, 32<<20)
	s, err := p.Take()
	if err != nil {
		t.Fatal(err)
	}
	dir := s.(*slot).d.path()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCgroupHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=alloc:"+strconv.Itoa(128<<20))
	err = runIn(t, s.Add, cmd)
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("allocating 128 MiB under a 32 MiB limit: %v; want killed", err)
	}
	if !s.OOMKilled() {
		t.Error("OOMKilled() = false after an OOM kill; want true")
	}
	peak := s.Peak()
	t.Logf("peak %d KiB under a 32 MiB limit", peak>>10)
	if peak < 16<<20 || peak > 33<<20 { // the kernel charges in batches: a little over
		t.Errorf("Peak() = %d; want 16-33 MiB", peak)
	}
	s.Release()

	s, err = p.Take()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	if got := s.(*slot).d.path(); got != dir {
		t.Fatalf("second Take: %s; want the same directory %s", got, dir)
	}
	if s.OOMKilled() {
		t.Error("OOMKilled() = true in a reused cgroup before anything ran; want false")
	}
	if err := runIn(t, s.Add, exec.Command("/bin/cat")); err != nil {
		t.Errorf("cat in the reused cgroup: %v", err)
	}
	if s.OOMKilled() {
		t.Error("OOMKilled() = true after a task that fits ran in a reused cgroup; want false")
	}
	p2 := s.Peak()
	t.Logf("peak %d KiB for cat in the reused cgroup (what the last child left charged included)", p2>>10)
	if p2 >= 32<<20 {
		t.Errorf("Peak() = %d after cat in a reused cgroup; want it reset", p2)
	}
}

// Two limiters in one process (two isolators, as tests make) never take or
// remove each other's cgroups.
func TestCgroupV1TwoLimitersInOneProcess(t *testing.T) {
	p1, c := v1Pool(t, 64<<20)
	p2, _ := v1Pool(t, 64<<20)
	s1, err := p1.Take()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := p2.Take()
	if err != nil {
		t.Fatal(err)
	}
	if s1.(*slot).d.path() == s2.(*slot).d.path() {
		t.Fatalf("two limiters took the same cgroup %s", s1.(*slot).d.path())
	}
	s1.Release()
	p1.Close()
	if _, err := os.Stat(s2.(*slot).d.path()); err != nil {
		t.Errorf("the other limiter's cgroup, after one closed: %v", err)
	}
	s2.Release()
	p2.Close()
	if n := ourV1Dirs(t, c.memBase); n != 0 {
		t.Errorf("both closed: %d directories left", n)
	}
}

func TestCgroupV1ReleaseKillsTasksLeft(t *testing.T) {
	p, _ := v1Pool(t, 64<<20)
	s, err := p.Take()
	if err != nil {
		t.Fatal(err)
	}
	d := s.(*slot).d.(*cgroupV1Dir)
	// A shell that, once in the cgroup, leaves a grandchild behind.
	cmd := exec.Command("/bin/sh", "-c", "read x; sleep 60 & exec sleep 61")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if err := s.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "\n")
	var pids []int
	for deadline := time.Now().Add(5 * time.Second); len(pids) < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("cgroup.procs = %v; want the shell's two sleeps", pids)
		}
		pids = cgroupProcs(d.pids)
	}
	s.Release()
	if left := cgroupProcs(d.pids); len(left) != 0 {
		t.Errorf("after Release, cgroup.procs = %v; want empty", left)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("the child after Release: %v; want killed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the child still runs 5 s after Release")
	}
	for _, pid := range pids {
		if pid != cmd.Process.Pid && alive(pid) {
			t.Errorf("grandchild %d still runs after Release", pid)
		}
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(after, "Z") && !strings.HasPrefix(after, "X")
}

// The v2 kernel interfaces this host has (its unified hierarchy holds no
// memory or pids controller): clone3 into a cgroup through CloneFD, and
// cgroup.kill.
func TestCgroupV2KernelCloneIntoAndKill(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: not root")
	}
	self, mounts, err := readSelfCgroups()
	if err != nil {
		t.Fatal(err)
	}
	own, err := v2Dir(mounts, self)
	if err != nil {
		t.Skipf("SKIPPED: no unified hierarchy here: %v", err)
	}
	dir := filepath.Join(own, fmt.Sprintf("hybrid-isolate-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("SKIPPED: unified hierarchy not writable here: %v", err)
	}
	t.Log("real kernel, unified hierarchy without controllers: CloneFD and cgroup.kill only; limits, memory.events and memory.peak are fixture-tested only")
	d := &cgroupV2Dir{dir: dir, fd: -1, rmdir: os.Remove}
	if err := d.open(); err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	defer func() {
		if err := d.remove(); err != nil {
			t.Error(err)
		}
	}()
	if d.kill == nil {
		t.Skip("SKIPPED: no cgroup.kill (Linux < 5.14)")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: d.cloneFD()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if got := cgroupProcs(dir); len(got) != 1 || got[0] != cmd.Process.Pid {
		t.Errorf("started with CloneFD: cgroup.procs = %v; want [%d]", got, cmd.Process.Pid)
	}
	if err := d.empty(); err != nil {
		t.Error(err)
	}
	err = cmd.Wait()
	if ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("after cgroup.kill: %v; want killed", err)
	}
}

// The cost per task of a cgroup: made and removed per task (the code before
// the pool, perTaskCgroup) against reused, with a real child started into
// it ("child": /bin/cat, which unlike /bin/true waits for its stdin to
// close, so Add never races its exit; "gochild": this Go test binary) or
// without ("bare").
// cpu-µs/op is this process's and its children's CPU per task;
// sys-cpu-µs/op the whole machine's (/proc/stat), which also counts the
// kernel workers that finish a cgroup's removal, and anything else running.
func BenchmarkCgroupPerTask(b *testing.B) {
	_, c := v1Pool(b, 512<<20)
	for _, child := range benchChildren {
		b.Run(child.name, func(b *testing.B) {
			cpu := startCPU()
			for b.Loop() {
				cc, err := newPerTaskCgroup(c, 512<<20)
				if err != nil {
					b.Fatal(err)
				}
				child.run(b, cc.add)
				cc.killAll()
			}
			cpu.report(b)
		})
	}
}

func BenchmarkCgroupReuse(b *testing.B) {
	p, _ := v1Pool(b, 512<<20)
	for _, child := range benchChildren {
		b.Run(child.name, func(b *testing.B) {
			cpu := startCPU()
			for b.Loop() {
				s, err := p.Take()
				if err != nil {
					b.Fatal(err)
				}
				child.run(b, s.Add)
				s.Release()
			}
			cpu.report(b)
		})
	}
}

// perTaskCgroup is a child's pair of v1 cgroups as made before the pool:
// made, written and removed per task, each file opened per use.
type perTaskCgroup struct{ mem, pids string }

func newPerTaskCgroup(c *cgroupV1, memLimit uint64) (*perTaskCgroup, error) {
	d, err := c.mkdir()
	if err != nil {
		return nil, err
	}
	cc := &perTaskCgroup{d.mem, d.pids}
	limit := strconv.FormatUint(memLimit, 10)
	err = writeFile(cc.mem, "memory.limit_in_bytes", limit)
	if err == nil {
		_ = writeFile(cc.mem, "memory.memsw.limit_in_bytes", limit)
		_ = writeFile(cc.mem, "memory.swappiness", "0")
		err = writeFile(cc.pids, "pids.max", strconv.Itoa(maxTasks))
	}
	if err != nil {
		cc.killAll()
		return nil, err
	}
	return cc, nil
}

func (cc *perTaskCgroup) add(pid int) error {
	p := strconv.Itoa(pid)
	if err := writeFile(cc.mem, "cgroup.procs", p); err != nil {
		return err
	}
	return writeFile(cc.pids, "cgroup.procs", p)
}

func (cc *perTaskCgroup) killAll() {
	emptyCgroup(true, cc.pids)
	removeDir(os.Remove, cc.mem)
	removeDir(os.Remove, cc.pids)
}

// benchChildren are what the benchmarks run in each cgroup.
var benchChildren = []struct {
	name string
	run  func(b *testing.B, add func(pid int) error)
}{
	{"child", func(b *testing.B, add func(int) error) { runChild(b, add, exec.Command("/bin/cat")) }},
	{"gochild", func(b *testing.B, add func(int) error) {
		// This test binary: a Go child that touches 4 MiB, as an isolate
		// child would.
		cmd := exec.Command(os.Args[0], "-test.run=^TestCgroupHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"=alloc:"+strconv.Itoa(4<<20))
		runChild(b, add, cmd)
	}},
	{"bare", func(*testing.B, func(int) error) {}},
}

// runChild is runIn for a benchmark, which a failed child stops.
func runChild(b *testing.B, add func(pid int) error, cmd *exec.Cmd) {
	if err := runIn(b, add, cmd); err != nil {
		b.Fatal(err)
	}
}

// runIn starts cmd, adds it to a cgroup, and lets it exit by closing its
// stdin, so that add never races its exit; it returns cmd.Wait's error.
func runIn(tb testing.TB, add func(pid int) error, cmd *exec.Cmd) error {
	tb.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	if err := add(cmd.Process.Pid); err != nil {
		tb.Fatal(err)
	}
	in.Close()
	return cmd.Wait()
}

// cpuAt is CPU time at a start: this process's and its reaped children's
// (rusage), and the machine's (/proc/stat).
type cpuAt struct {
	own   time.Duration
	ticks uint64
}

func startCPU() cpuAt { return cpuAt{ownCPU(), busyTicks()} }

func (c cpuAt) report(b *testing.B) {
	const hz = 100 // USER_HZ
	n := float64(b.N)
	b.ReportMetric(float64((ownCPU()-c.own).Microseconds())/n, "cpu-µs/op")
	b.ReportMetric(float64(busyTicks()-c.ticks)*1e6/hz/n, "sys-cpu-µs/op")
}

func ownCPU() time.Duration {
	var sum time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		syscall.Getrusage(who, &ru)
		sum += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return sum
}

// busyTicks sums the busy fields of /proc/stat's cpu line (guest time is
// in user's already).
func busyTicks() uint64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fields := strings.Fields(sc.Text())
	var sum uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system, irq softirq steal
		if i < len(fields) {
			n, _ := strconv.ParseUint(fields[i], 10, 64)
			sum += n
		}
	}
	return sum
}
