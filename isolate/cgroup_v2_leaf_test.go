//go:build linux

package isolate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// NOTE: PrepareCgroupV2 and the worker's use of hybrid-procs are tested
// here against the FIXTURE of cgroup_v2_test.go (plain files; its move
// stands in for the kernel's migration). The real kernel path is NOT
// exercised on this host (cgroup v1, and a unified hierarchy without
// controllers): the migration by a write to cgroup.procs, the EBUSY of the
// no-internal-processes rule, delegation and permissions, and whether
// systemd or a container runtime lets the leaf be. Only the no-op on this
// v1 host runs for real (TestCgroupPrepareV2OnThisHost).

// leafFixture is a pure v2 host as a fixture: the cgroup2 mount of its root
// at a temporary directory, and a process whose cgroup is
// /system.slice/hybrid.service there, holding procs. It returns the mounts,
// the process's /proc/self/cgroup and its cgroup's directory.
func leafFixture(t *testing.T, procs ...int) ([]cgroupMount, selfCgroup, string) {
	t.Helper()
	own := v2Fixture(t, "cpuset cpu io memory hugetlb pids rdma misc\n")
	writeFixture(t, own, "cgroup.procs", procsList(procs))
	root := filepath.Dir(filepath.Dir(own))
	mounts := []cgroupMount{{dir: root, root: "/", v2: true}}
	return mounts, parseProcCgroup([]byte("0::/system.slice/hybrid.service\n")), own
}

// fixturePid is the primary's pid in the fixtures: no real process (above
// any pid_max), so that nothing real is moved or signalled.
const fixturePid = 2147483601

func procsOf(t *testing.T, dir string) []int {
	t.Helper()
	pids, err := readProcs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func TestCgroupPrepareV2FixtureMovesIntoLeaf(t *testing.T) {
	noteFixtureOnly(t)
	mounts, self, own := leafFixture(t, fixturePid)
	did, err := prepareV2("auto", self, mounts, fixturePid, fixtureFS)
	if err != nil {
		t.Fatalf("prepareV2: %v", err)
	}
	t.Logf("did: %s", did)
	leaf := filepath.Join(own, procsLeaf)
	if got := procsOf(t, leaf); !slices.Equal(got, []int{fixturePid}) {
		t.Errorf("%s/cgroup.procs = %v; want [%d]", leaf, got, fixturePid)
	}
	if got := procsOf(t, own); len(got) != 0 {
		t.Errorf("%s/cgroup.procs = %v; want empty", own, got)
	}
	if !strings.Contains(did, "moved") || !strings.Contains(did, leaf) {
		t.Errorf("prepareV2 = %q; want it to say it moved this process into %s", did, leaf)
	}
	// The primary enables nothing: the workers do.
	if got := readFixture(t, own, "cgroup.subtree_control"); got != "" {
		t.Errorf("cgroup.subtree_control = %q after the primary's move; want untouched", got)
	}

	// A worker forked now is in the leaf: it makes its cgroups in own,
	// with memory and pids enabled there.
	worker := parseProcCgroup([]byte("0::/system.slice/hybrid.service/" + procsLeaf + "\n"))
	l, why := probeV2At(testLimiterLog(t), worker, mounts, 64<<20, maxTasks, fixtureFS)
	if l == nil {
		t.Fatalf("the worker's probe in %s: %s", leaf, why)
	}
	parent := filepath.Dir(mustTakePath(t, l))
	if filepath.Dir(parent) != own || !strings.HasPrefix(filepath.Base(parent), "hybrid-isolate-") {
		t.Errorf("child cgroups in %s; want in %s/hybrid-isolate-<pid>-<n>", parent, own)
	}
	for _, dir := range []string{own, parent} {
		if got := readFixture(t, dir, "cgroup.subtree_control"); got != "+memory +pids" {
			t.Errorf("%s: cgroup.subtree_control = %q; want +memory +pids", dir, got)
		}
	}
	if got := readFixture(t, leaf, "cgroup.subtree_control"); got != "" {
		t.Errorf("%s: cgroup.subtree_control = %q; want untouched", leaf, got)
	}
	l.Close()
	if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("closed: %s: %v; want removed", parent, err)
	}
	if _, err := os.Stat(leaf); err != nil {
		t.Errorf("closed: the leaf %s: %v; want kept", leaf, err)
	}
}

func TestCgroupPrepareV2FixtureIdempotent(t *testing.T) {
	noteFixtureOnly(t)
	mounts, _, own := leafFixture(t)
	leaf := filepath.Join(own, procsLeaf)
	if err := fixtureFS.mkdir(leaf); err != nil {
		t.Fatal(err)
	}
	writeFixture(t, leaf, "cgroup.procs", procsList([]int{fixturePid, fixturePid + 1}))

	// Already in the leaf (an upgrade's new primary, forked by the old
	// one; systemd's DelegateSubgroup=hybrid-procs): nothing moves.
	inLeaf := parseProcCgroup([]byte("0::/system.slice/hybrid.service/" + procsLeaf + "\n"))
	broken := cgroupFS{mkdir: failFS, rmdir: failFS, move: func(string, int) error { return failFS("") }}
	did, err := prepareV2("auto", inLeaf, mounts, fixturePid, broken)
	if err != nil || !strings.Contains(did, "already") {
		t.Errorf("prepareV2 in the leaf = %q, %v; want nothing done", did, err)
	}
	t.Logf("in the leaf: %s", did)

	// A restart in own, the leaf left by the last run: it is reused.
	writeFixture(t, own, "cgroup.procs", procsList([]int{fixturePid + 2}))
	self := parseProcCgroup([]byte("0::/system.slice/hybrid.service\n"))
	// The old primaries are gone (the fixture's leaf still lists them).
	writeFixture(t, leaf, "cgroup.procs", "")
	did, err = prepareV2("v2", self, mounts, fixturePid+2, fixtureFS)
	if err != nil {
		t.Fatalf("prepareV2 with the leaf left by the last run: %v", err)
	}
	t.Logf("restart: %s", did)
	if got := procsOf(t, leaf); !slices.Equal(got, []int{fixturePid + 2}) {
		t.Errorf("%s/cgroup.procs = %v; want [%d]", leaf, got, fixturePid+2)
	}
	if entries, _ := os.ReadDir(leaf); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return e.IsDir() }) {
		t.Errorf("the leaf has sub-cgroups: %v", entries)
	}
}

func failFS(string) error { return errors.New("fixture: not to be called") }

func TestCgroupPrepareV2FixtureForeignProcess(t *testing.T) {
	noteFixtureOnly(t)
	// A container's init, or a shell that ran hybrid without exec; pid 0
	// is one outside our pid namespace.
	const foreign = 2147483600
	mounts, self, own := leafFixture(t, foreign, fixturePid, 0)
	did, err := prepareV2("auto", self, mounts, fixturePid, fixtureFS)
	if err == nil {
		t.Fatalf("prepareV2 with foreign processes = %q, nil; want an error", did)
	}
	t.Logf("reason: %v", err)
	for _, want := range []string{own, "holds 2 processes that are not hybrid's", fmt.Sprint(foreign), "outside this pid namespace", "nothing was moved"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("reason %q; want it to say %q", err, want)
		}
	}
	if got := procsOf(t, own); !slices.Equal(got, []int{foreign, fixturePid, 0}) {
		t.Errorf("%s/cgroup.procs = %v; want all left where they were", own, got)
	}
	if _, err := os.Stat(filepath.Join(own, procsLeaf)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leaf: %v; want none made", err)
	}

	// Workers in the leaf of a cgroup that still holds a foreign process
	// (it came after the primary moved): the worker's reason names it.
	writeFixture(t, own, "cgroup.procs", procsList([]int{foreign}))
	if err := fixtureFS.mkdir(filepath.Join(own, procsLeaf)); err != nil {
		t.Fatal(err)
	}
	inLeaf := parseProcCgroup([]byte("0::/system.slice/hybrid.service/" + procsLeaf + "\n"))
	if _, err := prepareV2("auto", inLeaf, mounts, fixturePid, fixtureFS); err == nil || !strings.Contains(err.Error(), "hybrid's processes are in") {
		t.Errorf("prepareV2 in the leaf, a foreign process in own: %v; want why", err)
	}
	// As the kernel refuses (EBUSY), here a subtree_control that cannot be written.
	sub := filepath.Join(own, "cgroup.subtree_control")
	os.Remove(sub)
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	l, why := probeV2At(testLimiterLog(t), inLeaf, mounts, 64<<20, maxTasks, fixtureFS)
	if l != nil || !strings.Contains(why, "holds 1 process besides hybrid's") || !strings.Contains(why, fmt.Sprint(foreign)) {
		t.Errorf("the worker's probe: %v, %q; want nil and why", l, why)
	}
	t.Logf("worker's reason: %s", why)
}

func TestCgroupPrepareV2FixtureNothingToDo(t *testing.T) {
	noteFixtureOnly(t)
	for _, mode := range []string{"off", "v1"} {
		mounts, self, own := leafFixture(t, fixturePid)
		if did, err := prepareV2(mode, self, mounts, fixturePid, fixtureFS); did != "" || err != nil {
			t.Errorf("prepareV2(%q) = %q, %v; want \"\", nil", mode, did, err)
		}
		checkUntouched(t, own)
	}
	if _, err := prepareV2("v3", selfCgroup{}, nil, fixturePid, fixtureFS); err == nil {
		t.Error(`prepareV2("v3"): nil; want an error`)
	}

	// A v1 host (as this one): a unified hierarchy without memory and pids.
	mounts, _, own := leafFixture(t, fixturePid)
	writeFixture(t, own, "cgroup.controllers", "hugetlb\n")
	self := parseProcCgroup([]byte("8:pids:/\n4:memory:/x\n0::/system.slice/hybrid.service\n"))
	did, err := prepareV2("auto", self, mounts, fixturePid, fixtureFS)
	if err != nil || !strings.Contains(did, "not available") {
		t.Errorf("auto on a v1 host: %q, %v; want nothing done, and why", did, err)
	}
	t.Logf("auto on a v1 host: %s", did)
	if _, err := prepareV2("v2", self, mounts, fixturePid, fixtureFS); err == nil {
		t.Error("v2 on a v1 host: nil; want an error")
	}
	checkUntouched(t, own)

	// No unified hierarchy at all.
	v1only := parseProcCgroup([]byte("8:pids:/\n4:memory:/x\n"))
	if did, err := prepareV2("auto", v1only, mounts, fixturePid, fixtureFS); err != nil || did == "" {
		t.Errorf("auto without cgroup v2: %q, %v; want nothing done, and why", did, err)
	}

	// The root cgroup may enable controllers with processes in it.
	mounts, self, own = leafFixture(t, fixturePid, 1)
	os.Remove(filepath.Join(own, "cgroup.type"))
	if did, err := prepareV2("v2", self, mounts, fixturePid, fixtureFS); err != nil || !strings.Contains(did, "root cgroup") {
		t.Errorf("in the root cgroup: %q, %v; want nothing done", did, err)
	}
	checkUntouched(t, own)
}

// checkUntouched fails if a leaf was made in own.
func checkUntouched(t *testing.T, own string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(own, procsLeaf)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: %v; want no leaf made", own, err)
	}
}

func TestCgroupPrepareV2FixtureMoveFails(t *testing.T) {
	noteFixtureOnly(t)
	mounts, self, own := leafFixture(t, fixturePid)
	refuse := fixtureFS
	refuse.move = func(string, int) error {
		return &os.PathError{Op: "write", Path: "cgroup.procs", Err: os.ErrPermission}
	}
	_, err := prepareV2("auto", self, mounts, fixturePid, refuse)
	if err == nil || !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "Delegate=yes") {
		t.Errorf("a move refused: %v; want the cause and a hint", err)
	}
	t.Logf("reason: %v", err)
	checkUntouched(t, own) // the leaf it made is removed
}

// The v2 base of a worker in the leaf, where the leaf's parent is or is not
// in the mounted sub-tree.
func TestCgroupV2Base(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup, mountinfo, base string
		inLeaf                        bool
	}{
		{"systemd service", "0::/system.slice/hybrid.service\n", "26 25 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"/sys/fs/cgroup/system.slice/hybrid.service", false},
		{"its leaf", "0::/system.slice/hybrid.service/hybrid-procs\n", "26 25 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			"/sys/fs/cgroup/system.slice/hybrid.service", true},
		{"a container's namespace root", "0::/hybrid-procs\n", "700 690 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup rw\n",
			"/sys/fs/cgroup", true},
		{"a leaf at the top of a bind mount", "0::/pod1/hybrid-procs\n", "700 690 0:24 /pod1/hybrid-procs /sys/fs/cgroup rw - cgroup2 cgroup rw\n",
			"/sys/fs/cgroup", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, inLeaf, err := v2Base(parseMountinfo([]byte(tc.mountinfo)), parseProcCgroup([]byte(tc.cgroup)))
			if err != nil || base != tc.base || inLeaf != tc.inLeaf {
				t.Errorf("v2Base = %q, %v, %v; want %q, %v", base, inLeaf, err, tc.base, tc.inLeaf)
			}
		})
	}
}

// On this host for real: a v1 host, or one whose unified hierarchy has no
// memory and pids, is left as it is. Skipped where cgroup v2 could be
// prepared, so that the test process is never moved.
func TestCgroupPrepareV2OnThisHost(t *testing.T) {
	self, mounts, err := readSelfCgroups()
	if err != nil {
		t.Skipf("SKIPPED: %v", err)
	}
	if own, _, err := v2Base(mounts, self); err == nil {
		b, _ := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
		if hasControllers(string(b)) {
			t.Skipf("SKIPPED: %s has memory and pids: PrepareCgroupV2 would move this test process", own)
		}
	}
	before, _ := os.ReadFile("/proc/self/cgroup")
	did, err := PrepareCgroupV2("auto")
	if err != nil || did == "" {
		t.Errorf(`PrepareCgroupV2("auto") = %q, %v; want nothing done, and why`, did, err)
	}
	t.Logf("real kernel, no v2 controllers here: %s", did)
	if _, err := PrepareCgroupV2("v2"); err == nil {
		t.Error(`PrepareCgroupV2("v2") = nil; want an error without v2 controllers`)
	}
	if after, _ := os.ReadFile("/proc/self/cgroup"); string(after) != string(before) {
		t.Errorf("/proc/self/cgroup changed:\n%s\nwas\n%s", after, before)
	}
}
