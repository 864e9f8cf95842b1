//go:build linux

package isolate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// NOTE: the cgroup v2 backend is tested here against a fixture: a temporary
// directory of plain files laid out like a cgroup v2 directory, whose mkdir
// writes the files the kernel would make. The real v2 kernel path (limits
// enforced, memory.events and memory.peak kept by the kernel, the
// no-internal-processes rule) is NOT exercised on a host with cgroup v1 only;
// TestCgroupV2KernelCloneIntoAndKill runs CloneFD and cgroup.kill on the
// real unified hierarchy where one is mounted and writable.

func noteFixtureOnly(t *testing.T) {
	t.Log("NOTE: cgroup v2 FIXTURE test (plain files): the real v2 kernel path is not exercised on this host")
}

func TestCgroupDetectFromProcFiles(t *testing.T) {
	const hostV1 = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	const pureV2 = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	for _, tc := range []struct {
		name, cgroup, mountinfo string
		v2, mem, pids           string // "" where none is found
	}{
		{name: "this host: v1 with an empty unified mount",
			cgroup:    "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/e82d\n2:cpu,cpuacct:/\n0::/\n",
			mountinfo: hostV1,
			v2:        "/sys/fs/cgroup/unified", mem: "/sys/fs/cgroup/memory/process_api/e82d", pids: "/sys/fs/cgroup/pids"},
		{name: "systemd service, pure v2",
			cgroup: "0::/system.slice/hybrid.service\n", mountinfo: pureV2,
			v2: "/sys/fs/cgroup/system.slice/hybrid.service"},
		{name: "container with a cgroup namespace",
			cgroup: "0::/\n", mountinfo: "700 690 0:24 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n",
			v2: "/sys/fs/cgroup"},
		{name: "bind mount of a sub-tree, no namespace",
			cgroup:    "0::/kubepods/pod1/c2\n",
			mountinfo: "700 690 0:24 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup rw\n",
			v2:        "/sys/fs/cgroup/c2"},
		{name: "outside the mounted sub-tree",
			cgroup:    "0::/other/c2\n",
			mountinfo: "700 690 0:24 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup rw\n"},
		{name: "a prefix that is not a parent",
			cgroup:    "0::/kubepods/pod10\n",
			mountinfo: "700 690 0:24 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup rw\n"},
		{name: "outside our cgroup namespace",
			cgroup: "0::/../sibling\n", mountinfo: pureV2},
		{name: "escaped mount point",
			cgroup: "0::/a\n", mountinfo: `26 25 0:24 / /mnt/cg\040v2 rw - cgroup2 cgroup2 rw` + "\n",
			v2: "/mnt/cg v2/a"},
		{name: "v1 only",
			cgroup: "4:memory:/\n8:pids:/\n", mountinfo: hostV1,
			mem: "/sys/fs/cgroup/memory", pids: "/sys/fs/cgroup/pids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self, mounts := parseProcCgroup([]byte(tc.cgroup)), parseMountinfo([]byte(tc.mountinfo))
			got, err := v2Dir(mounts, self)
			if got != tc.v2 || (err == nil) != (tc.v2 != "") {
				t.Errorf("v2Dir = %q, %v; want %q", got, err, tc.v2)
			}
			for _, c := range []struct{ controller, want string }{{"memory", tc.mem}, {"pids", tc.pids}} {
				got, err := v1Dir(mounts, self, c.controller)
				if got != c.want || (err == nil) != (c.want != "") {
					t.Errorf("v1Dir(%s) = %q, %v; want %q", c.controller, got, err, c.want)
				}
			}
		})
	}
}

func TestCgroupIsolatePid(t *testing.T) {
	for name, want := range map[string]int{"hybrid-isolate-123-4": 123, "/x/hybrid-isolate-9-10": 9,
		"hybrid-isolate-123": -1, "hybrid-isolate-x-1": -1, "hybrid-isolate-1-x": -1, "other-1-2": -1} {
		pid, ok := isolatePid(name)
		if (want < 0 && ok) || (want >= 0 && (!ok || pid != want)) {
			t.Errorf("isolatePid(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}

// fixtureFiles are the files the kernel makes in a v2 cgroup directory, as
// a child cgroup with memory and pids enabled has them.
var fixtureFiles = map[string]string{
	"cgroup.controllers":     "memory pids\n",
	"cgroup.subtree_control": "",
	"cgroup.procs":           "",
	"cgroup.type":            "domain\n",
	"cgroup.events":          "populated 0\nfrozen 0\n",
	"cgroup.kill":            "",
	"memory.max":             "max\n",
	"memory.swap.max":        "max\n",
	"memory.oom.group":       "0\n",
	"memory.events":          "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
	"memory.peak":            "0\n",
	"pids.max":               "max\n",
}

// fixtureFS stands in for cgroupfs: mkdir makes the files, rmdir refuses a
// directory with child cgroups, move takes the pid out of the parent
// cgroup's cgroup.procs (where the fixtures start a process) and adds it to
// the directory's.
var fixtureFS = cgroupFS{
	mkdir: func(dir string) error {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		for name, content := range fixtureFiles {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				return err
			}
		}
		return nil
	},
	rmdir: func(dir string) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.IsDir() {
				return &os.PathError{Op: "rmdir", Path: dir, Err: syscall.EBUSY}
			}
		}
		return os.RemoveAll(dir)
	},
	move: func(dir string, pid int) error {
		to, err := readProcs(dir)
		if err != nil {
			return err
		}
		from := filepath.Dir(dir)
		left, err := readProcs(from)
		if err != nil {
			return err
		}
		left = slices.DeleteFunc(left, func(p int) bool { return p == pid })
		if err := os.WriteFile(filepath.Join(from, "cgroup.procs"), []byte(procsList(left)), 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(procsList(append(to, pid))), 0o644)
	},
}

// procsList is a cgroup.procs file's content.
func procsList(pids []int) string {
	var b strings.Builder
	for _, pid := range pids {
		fmt.Fprintf(&b, "%d\n", pid)
	}
	return b.String()
}

// v2Fixture returns the directory of a fixture's own cgroup, with
// cgroup.controllers as given and no controller enabled below it.
func v2Fixture(t *testing.T, controllers string) string {
	t.Helper()
	own := filepath.Join(t.TempDir(), "system.slice", "hybrid.service")
	if err := os.MkdirAll(filepath.Dir(own), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fixtureFS.mkdir(own); err != nil {
		t.Fatal(err)
	}
	writeFixture(t, own, "cgroup.controllers", controllers)
	return own
}

func writeFixture(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFixture(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCgroupV2FixturePool(t *testing.T) {
	noteFixtureOnly(t)
	own := v2Fixture(t, "cpuset cpu io memory hugetlb pids rdma misc\n")
	// A dead worker's tree: swept.
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(own, fmt.Sprintf("hybrid-isolate-%d-1", dead.Process.Pid))
	if err := fixtureFS.mkdir(stale); err != nil {
		t.Fatal(err)
	}
	if err := fixtureFS.mkdir(filepath.Join(stale, "3")); err != nil {
		t.Fatal(err)
	}

	l, why := newCgroupV2Pool(testLimiterLog(t), own, 64<<20, maxTasks, fixtureFS)
	if l == nil {
		t.Fatal(why)
	}
	if l.Name() != "cgroup v2" {
		t.Errorf("Name() = %q; want cgroup v2", l.Name())
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dead worker's cgroups: %v; want swept", err)
	}
	parent := filepath.Dir(mustTakePath(t, l))
	if !strings.HasPrefix(filepath.Base(parent), fmt.Sprintf("hybrid-isolate-%d-", os.Getpid())) || filepath.Dir(parent) != own {
		t.Errorf("child cgroups in %s; want in %s/hybrid-isolate-%d-<n>", parent, own, os.Getpid())
	}
	for _, dir := range []string{own, parent} {
		if got := readFixture(t, dir, "cgroup.subtree_control"); got != "+memory +pids" {
			t.Errorf("%s: cgroup.subtree_control = %q; want +memory +pids", dir, got)
		}
	}

	s, err := l.Take()
	if err != nil {
		t.Fatal(err)
	}
	dir := s.(*slot).d.path()
	for name, want := range map[string]string{"memory.max": "67108864", "pids.max": "64", "memory.swap.max": "0", "memory.oom.group": "1"} {
		if got := readFixture(t, dir, name); got != want {
			t.Errorf("%s = %q; want %q", name, got, want)
		}
	}
	var fdStat, dirStat syscall.Stat_t
	if fd := s.CloneFD(); fd < 0 || syscall.Fstat(fd, &fdStat) != nil || syscall.Stat(dir, &dirStat) != nil || fdStat.Ino != dirStat.Ino {
		t.Errorf("CloneFD() = %d; want an open fd of %s", fd, dir)
	}
	if err := s.Add(12345); err != nil || readFixture(t, dir, "cgroup.procs") != "12345" {
		t.Errorf("Add(12345): %v, cgroup.procs %q; want 12345 written", err, readFixture(t, dir, "cgroup.procs"))
	}
	writeFixture(t, dir, "cgroup.procs", "")

	// OOM kills count from the baseline when the cgroup was (re)readied.
	if s.OOMKilled() {
		t.Error("OOMKilled() = true in a new cgroup")
	}
	writeFixture(t, dir, "memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n")
	if !s.OOMKilled() {
		t.Error("OOMKilled() = false with oom_kill 1 since Take")
	}
	// memory.peak was reset through the slot's fd; what the kernel shows
	// next is this child's.
	if got := readFixture(t, dir, "memory.peak"); got != "reset\n" {
		t.Errorf("memory.peak written %q at Take; want a reset", got)
	}
	writeFixture(t, dir, "memory.peak", "33554432\n")
	if got := s.Peak(); got != 32<<20 {
		t.Errorf("Peak() = %d; want %d", got, 32<<20)
	}
	s.Release()
	if got := readFixture(t, dir, "cgroup.kill"); got != "1" {
		t.Errorf("Release: cgroup.kill = %q; want 1 written", got)
	}
	if s.OOMKilled() || s.Peak() != 0 || s.CloneFD() != -1 || s.Add(1) == nil {
		t.Error("a released slot still reports")
	}

	s, err = l.Take()
	if err != nil {
		t.Fatal(err)
	}
	if got := s.(*slot).d.path(); got != dir {
		t.Errorf("second Take: %s; want %s again", got, dir)
	}
	if s.OOMKilled() {
		t.Error("OOMKilled() = true in a reused cgroup (oom_kill still 1, as when released)")
	}
	writeFixture(t, dir, "memory.events", "oom_kill 2\n")
	if !s.OOMKilled() {
		t.Error("OOMKilled() = false with oom_kill 2, 1 when taken")
	}

	l.Close()
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("closed with a slot out: %v; want its cgroup kept until released", err)
	}
	s.Release()
	for _, d := range []string{dir, parent} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("closed and released: %s: %v; want removed", d, err)
		}
	}
}

// mustTakePath takes a slot, notes its directory and releases it.
func mustTakePath(t *testing.T, l limiter) string {
	t.Helper()
	s, err := l.Take()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	return s.(*slot).d.path()
}

func TestCgroupV2FixtureNotEmptiedIsNotReused(t *testing.T) {
	noteFixtureOnly(t)
	own := v2Fixture(t, "memory pids")
	l, why := newCgroupV2Pool(testLimiterLog(t), own, 64<<20, maxTasks, fixtureFS)
	if l == nil {
		t.Fatal(why)
	}
	defer l.Close()
	s, err := l.Take()
	if err != nil {
		t.Fatal(err)
	}
	dir := s.(*slot).d.path()
	// A task that never goes (with cgroup.kill, nothing is signalled; the
	// pid is above any pid_max).
	writeFixture(t, dir, "cgroup.events", "populated 1\nfrozen 0\n")
	writeFixture(t, dir, "cgroup.procs", "2147483600\n")
	s.Release()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a cgroup that could not be emptied: %v; want removed", err)
	}
	s, err = l.Take()
	if err != nil {
		t.Fatal(err)
	}
	if s.(*slot).d.path() == dir {
		t.Error("the cgroup that could not be emptied was taken again")
	}
	s.Release()
}

func TestCgroupV2FixtureUnusable(t *testing.T) {
	noteFixtureOnly(t)
	// Controllers bound to v1 (a hybrid host like this one).
	own := v2Fixture(t, "hugetlb\n")
	if l, why := newCgroupV2Pool(testLimiterLog(t), own, 64<<20, maxTasks, fixtureFS); l != nil || !strings.Contains(why, "not available") {
		t.Errorf("without memory and pids: %v, %q; want nil and why", l, why)
	}
	// Our own cgroup holds processes and refuses to enable controllers (the
	// kernel's EBUSY; here, a directory that cannot be written).
	own = v2Fixture(t, "memory pids\n")
	writeFixture(t, own, "cgroup.procs", fmt.Sprintf("%d\n2147483600\n", os.Getpid()))
	sub := filepath.Join(own, "cgroup.subtree_control")
	os.Remove(sub)
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	l, why := newCgroupV2Pool(testLimiterLog(t), own, 64<<20, maxTasks, fixtureFS)
	if l != nil || !strings.Contains(why, "holds 2 processes") {
		t.Errorf("own cgroup with processes: %v, %q; want nil and why", l, why)
	}
	t.Logf("reason: %s", why)
	if entries, _ := filepath.Glob(filepath.Join(own, "hybrid-isolate-*")); len(entries) != 0 {
		t.Errorf("unusable, yet made %v", entries)
	}
}

// Before Linux 6.12 memory.peak cannot be reset: only a peak above the
// earlier children's is known.
func TestCgroupV2FixturePeakWithoutReset(t *testing.T) {
	noteFixtureOnly(t)
	dir := filepath.Join(t.TempDir(), "1")
	if err := fixtureFS.mkdir(dir); err != nil {
		t.Fatal(err)
	}
	d := &cgroupV2Dir{dir: dir, fd: -1, rmdir: fixtureFS.rmdir}
	if err := d.open(); err != nil {
		t.Fatal(err)
	}
	defer d.remove()
	writeFixture(t, dir, "memory.peak", "1000\n")
	// As the kernel opens a read-only memory.peak.
	d.peakFile.Close()
	f, err := os.Open(filepath.Join(dir, "memory.peak"))
	if err != nil {
		t.Fatal(err)
	}
	d.peakFile = f
	d.files = append(d.files, f)
	d.reset()
	if d.peakReset || d.peakBase != 1000 {
		t.Fatalf("reset on a read-only memory.peak: reset %v, base %d; want false, 1000", d.peakReset, d.peakBase)
	}
	if got := d.peak(); got != 0 {
		t.Errorf("peak() = %d, no higher than before; want 0 (unknown)", got)
	}
	writeFixture(t, dir, "memory.peak", "5000\n")
	if got := d.peak(); got != 5000 {
		t.Errorf("peak() = %d; want 5000, above the earlier children's", got)
	}
}

func TestCgroupNewLimiterModes(t *testing.T) {
	if l, why := newLimiter("off", 64<<20, maxTasks, testLimiterLog(t)); l != nil || why != "" {
		t.Errorf(`newLimiter("off") = %v, %q; want nil, ""`, l, why)
	}
	if l, why := newLimiter("v3", 64<<20, maxTasks, testLimiterLog(t)); l != nil || why == "" {
		t.Errorf(`newLimiter("v3") = %v, %q; want nil and why`, l, why)
	}
	for _, mode := range []string{"auto", "v1", "v2"} {
		l, why := newLimiter(mode, 64<<20, maxTasks, testLimiterLog(t))
		if l == nil {
			t.Logf("newLimiter(%q): none: %s", mode, why)
			continue
		}
		t.Logf("newLimiter(%q): %s", mode, l.Name())
		s, err := l.Take()
		if err != nil {
			t.Errorf("%s: Take: %v", l.Name(), err)
		} else {
			s.Release()
		}
		l.Close()
	}
}
