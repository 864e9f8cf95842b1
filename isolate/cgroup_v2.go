//go:build linux

package isolate

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// cgroupV2 makes child cgroups in the unified hierarchy, below a cgroup
// that holds no process (the base), so that they stay within whatever
// bounds it:
//
//	<base>/                               memory and pids in cgroup.subtree_control
//	<base>/hybrid-procs/                  hybrid's primary and workers (PrepareCgroupV2)
//	<base>/hybrid-isolate-<pid>-<n>/      memory and pids in cgroup.subtree_control
//	<base>/hybrid-isolate-<pid>-<n>/<m>/  one child: memory.max, memory.swap.max 0, pids.max
//
// The no-internal-processes rule of cgroup v2 forbids controllers in the
// subtree_control of a cgroup that has processes, the root cgroup (the
// hierarchy's, not a namespace's) excepted. So the primary, before it
// forks any worker, moves itself into the leaf hybrid-procs of its own
// cgroup (PrepareCgroupV2), and a worker whose cgroup is that leaf uses
// the leaf's parent as the base. A worker elsewhere uses its own cgroup,
// which qualifies only as the root; elsewhere the backend is not usable
// and says why.
//
// A child starts in its cgroup from its first instruction (clone3 with
// CLONE_INTO_CGROUP: CloneFD), Release kills with cgroup.kill (Linux ≥
// 5.14), and the high-water mark is memory.peak, reset through its fd
// between children (Linux ≥ 6.12; before, only a peak above the previous
// children's is reported).
type cgroupV2 struct {
	base, parent string
	memLimit     uint64
	maxTasks     int
	fs           cgroupFS
}

// cgroupFS makes and removes cgroup directories and moves processes into
// them: the kernel's cgroupfs in production; in tests, a fixture directory
// of plain files standing in for it, whose mkdir writes the files the
// kernel would make and whose move also takes the pid out of the parent's
// cgroup.procs, as the kernel's does.
type cgroupFS struct {
	mkdir func(dir string) error
	rmdir func(dir string) error
	move  func(dir string, pid int) error // pid's whole thread group into dir
}

var kernelCgroupFS = cgroupFS{
	mkdir: func(dir string) error { return os.Mkdir(dir, 0o755) },
	rmdir: os.Remove,
	move:  func(dir string, pid int) error { return writeFile(dir, "cgroup.procs", strconv.Itoa(pid)) },
}

// procsLeaf is the cgroup, below the one hybrid was started in, that its
// primary and workers live in (PrepareCgroupV2).
const procsLeaf = "hybrid-procs"

// v2Controllers are the controllers a child cgroup needs, as written to
// cgroup.subtree_control.
const v2Controllers = "+memory +pids"

// probeV2 returns a v2 limiter below this process's cgroup, or nil and why not.
func probeV2(log *slog.Logger, memLimit uint64, maxTasks int) (limiter, string) {
	self, mounts, err := readSelfCgroups()
	if err != nil {
		return nil, "cgroup v2: " + err.Error()
	}
	return probeV2At(log, self, mounts, memLimit, maxTasks, kernelCgroupFS)
}

// probeV2At is probeV2 for the process whose /proc/self/cgroup is self,
// with the cgroup mounts given.
func probeV2At(log *slog.Logger, self selfCgroup, mounts []cgroupMount, memLimit uint64, maxTasks int, cfs cgroupFS) (limiter, string) {
	base, _, err := v2Base(mounts, self)
	if err != nil {
		return nil, "cgroup v2: " + err.Error()
	}
	return newCgroupV2Pool(log, base, memLimit, maxTasks, cfs)
}

// v2Base returns the directory of the cgroup below which this process
// makes its children's: the parent of its own where its own is the leaf
// hybrid-procs (inLeaf), else its own.
func v2Base(mounts []cgroupMount, self selfCgroup) (dir string, inLeaf bool, err error) {
	if self.hasV2 && path.Base(self.v2) == procsLeaf {
		up := selfCgroup{v2: path.Dir(self.v2), hasV2: true}
		if dir, err := v2Dir(mounts, up); err == nil { // else the leaf is the top of the mount
			return dir, true, nil
		}
	}
	dir, err = v2Dir(mounts, self)
	return dir, false, err
}

// newCgroupV2Pool returns a limiter making child cgroups below base (a
// directory of the unified hierarchy), or nil and why not. It sweeps the
// cgroups of dead workers and makes a first child cgroup, the pool's first
// idle one.
func newCgroupV2Pool(log *slog.Logger, base string, memLimit uint64, maxTasks int, cfs cgroupFS) (limiter, string) {
	c := &cgroupV2{base: base, memLimit: memLimit, maxTasks: maxTasks, fs: cfs,
		parent: filepath.Join(base, fmt.Sprintf("hybrid-isolate-%d-%d", os.Getpid(), cgroupSeq.Add(1)))}
	if why := c.enable(); why != "" {
		return nil, why
	}
	c.sweep()
	err := cfs.mkdir(c.parent)
	if errors.Is(err, fs.ErrExist) { // a dead process with our pid left it
		c.clear(c.parent)
		err = cfs.mkdir(c.parent)
	}
	if err == nil {
		if err = writeFile(c.parent, "cgroup.subtree_control", v2Controllers); err != nil {
			removeDir(cfs.rmdir, c.parent)
		}
	}
	if err != nil {
		return nil, "cgroup v2 not writable: " + err.Error()
	}
	d, err := c.makeDir()
	if err != nil {
		removeDir(cfs.rmdir, c.parent)
		return nil, "cgroup v2 not writable: " + err.Error()
	}
	return &cgroupPool{name: "cgroup v2", log: log, maxIdle: maxIdle,
		newDir: func() (cgroupDir, error) { return c.makeDir() },
		finish: func() { c.finish(log) },
		idle:   []idleDir{{d, d.oomKills()}}}, ""
}

// enable makes memory and pids available to base's sub-cgroups, or says why
// it cannot.
func (c *cgroupV2) enable() string {
	b, err := os.ReadFile(filepath.Join(c.base, "cgroup.controllers"))
	if err != nil {
		return "cgroup v2: " + err.Error()
	}
	if !hasControllers(string(b)) {
		return fmt.Sprintf("cgroup v2 %s: memory and pids controllers not available (cgroup.controllers %q); "+
			"on a hybrid host they are bound to cgroup v1", c.base, strings.TrimSpace(string(b)))
	}
	b, _ = os.ReadFile(filepath.Join(c.base, "cgroup.subtree_control"))
	if hasControllers(string(b)) {
		return ""
	}
	err = writeFile(c.base, "cgroup.subtree_control", v2Controllers)
	if err == nil {
		return ""
	}
	procs, _ := readProcs(c.base)
	if n := len(procs); n > 0 {
		if slices.Contains(procs, os.Getpid()) {
			return fmt.Sprintf("cgroup v2 %s holds %s (this one included), so memory and pids cannot be "+
				"enabled for cgroups below it: cgroup v2 allows that only in the root cgroup (%v)", c.base, nProcs(n), err)
		}
		return fmt.Sprintf("cgroup v2 %s holds %s besides hybrid's (in %s): %s; so memory and pids cannot be "+
			"enabled for cgroups below it: cgroup v2 allows that only in a cgroup without processes (%v)",
			c.base, nProcs(n), procsLeaf, describeProcs(procs), err)
	}
	return fmt.Sprintf("cgroup v2 %s: cannot enable memory and pids below it (not delegated to this user?): %v", c.base, err)
}

func hasControllers(list string) bool {
	f := strings.Fields(list)
	return slices.Contains(f, "memory") && slices.Contains(f, "pids")
}

// sweep kills the tasks of, and removes, the isolate cgroups of workers that
// are gone: a worker killed by SIGKILL cannot.
func (c *cgroupV2) sweep() {
	dirs, _ := filepath.Glob(filepath.Join(c.base, "hybrid-isolate-*"))
	for _, dir := range dirs {
		if pid, ok := isolatePid(dir); ok && workerGone(pid) {
			c.clear(dir)
		}
	}
}

// clear empties and removes parent's child cgroups, then parent.
func (c *cgroupV2) clear(parent string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if e.IsDir() {
			dir := filepath.Join(parent, e.Name())
			_ = writeFile(dir, "cgroup.kill", "1")
			emptyCgroup(true, dir)
			removeDir(c.fs.rmdir, dir)
		}
	}
	removeDir(c.fs.rmdir, parent)
}

// finish removes the parent cgroup once its children are gone.
func (c *cgroupV2) finish(log *slog.Logger) {
	if err := removeDir(c.fs.rmdir, c.parent); err != nil {
		log.Error("isolate: cgroup leaked: cannot remove it", "cgroup", c.parent, "err", err.Error())
	}
}

// cgroupV2Dir is one child cgroup of the unified hierarchy, with the files
// used per child held open.
type cgroupV2Dir struct {
	dir       string
	fd        int // the directory, for CLONE_INTO_CGROUP
	files     cgroupFiles
	procs     *os.File // cgroup.procs, written by add
	events    *os.File // cgroup.events: populated
	memEvents *os.File // memory.events: oom_kill; nil without the memory controller
	kill      *os.File // cgroup.kill; nil before Linux 5.14
	peakFile  *os.File // memory.peak, read and reset through this fd; nil before Linux 5.19
	peakReset bool     // memory.peak was reset (Linux ≥ 6.12)
	peakBase  uint64   // else the peak before this child
	rmdir     func(string) error
}

func (c *cgroupV2) makeDir() (*cgroupV2Dir, error) {
	dir := filepath.Join(c.parent, strconv.FormatUint(cgroupSeq.Add(1), 10))
	if err := c.fs.mkdir(dir); err != nil {
		return nil, err
	}
	d := &cgroupV2Dir{dir: dir, fd: -1, rmdir: c.fs.rmdir}
	err := writeFile(dir, "memory.max", strconv.FormatUint(c.memLimit, 10))
	if err == nil {
		err = writeFile(dir, "pids.max", strconv.Itoa(c.maxTasks))
	}
	if err == nil {
		// No swap either, where the kernel accounts it.
		if err = writeFile(dir, "memory.swap.max", "0"); errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		// An OOM kills every task of the cgroup, not just the largest.
		_ = writeFile(dir, "memory.oom.group", "1")
	}
	if err == nil {
		err = d.open()
	}
	if err != nil {
		d.remove()
		return nil, err
	}
	return d, nil
}

// open opens what d holds open (the directory, its files) and finds what
// the kernel offers.
func (d *cgroupV2Dir) open() error {
	fd, err := syscall.Open(d.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: d.dir, Err: err}
	}
	d.fd = fd
	open := func(f **os.File, name string, flag int) {
		if err == nil {
			*f, err = d.files.open(filepath.Join(d.dir, name), flag)
		}
	}
	open(&d.procs, "cgroup.procs", os.O_WRONLY)
	open(&d.events, "cgroup.events", os.O_RDONLY)
	if err != nil {
		return err
	}
	// Present with the memory controller (makeDir wrote memory.max).
	d.memEvents, _ = d.files.open(filepath.Join(d.dir, "memory.events"), os.O_RDONLY)
	d.kill, _ = d.files.open(filepath.Join(d.dir, "cgroup.kill"), os.O_WRONLY)
	peak := filepath.Join(d.dir, "memory.peak")
	if d.peakFile, err = d.files.open(peak, os.O_RDWR); err != nil {
		d.peakFile, _ = d.files.open(peak, os.O_RDONLY) // read-only before Linux 6.12
	}
	return d.reset()
}

func (d *cgroupV2Dir) path() string { return d.dir }
func (d *cgroupV2Dir) cloneFD() int { return d.fd }

func (d *cgroupV2Dir) add(pid int) error { return pwrite(d.procs, strconv.Itoa(pid)) }

func (d *cgroupV2Dir) oomKills() uint64 {
	if d.memEvents == nil {
		return 0
	}
	n, _ := preadKeyed(d.memEvents, "oom_kill")
	return n
}

func (d *cgroupV2Dir) peak() uint64 {
	if d.peakFile == nil {
		return 0
	}
	n, _ := preadUint(d.peakFile)
	if d.peakReset || n > d.peakBase {
		return n
	}
	return 0 // not above an earlier child's
}

// empty kills with cgroup.kill, which no fork escapes and which never
// signals a recycled pid, where the kernel has it.
func (d *cgroupV2Dir) empty() error {
	killed := d.kill != nil && pwrite(d.kill, "1") == nil
	if n, ok := preadKeyed(d.events, "populated"); ok && n == 0 {
		return nil
	}
	return emptyCgroup(!killed, d.dir)
}

// reset resets memory.peak for reads through d.peakFile, or else records it.
func (d *cgroupV2Dir) reset() error {
	if d.peakFile != nil {
		if d.peakReset = pwrite(d.peakFile, "reset\n") == nil; !d.peakReset {
			d.peakBase, _ = preadUint(d.peakFile)
		}
	}
	return nil
}

func (d *cgroupV2Dir) remove() error {
	if d.fd >= 0 {
		syscall.Close(d.fd)
		d.fd = -1
	}
	d.files.close()
	return removeDir(d.rmdir, d.dir)
}

// PrepareCgroupV2 makes this process's cgroup v2 usable for isolate children, where it is delegated and writable:
// it moves this process (the primary; its workers are forked afterwards and inherit the leaf) into a leaf
// <own>/hybrid-procs, so that <own> holds no process and can enable +memory +pids for the children's cgroups.
// It returns what it did for the log, or an error saying why not; nothing is changed on cgroup v1, on "off",
// or when <own> already is processless. It never fails the start: the caller logs and goes on.
//
// mode is [Config.Cgroup]: on "off" and "v1" it does nothing and returns "", nil. On "auto", a host
// where cgroup v2 cannot bound memory and processes (no unified hierarchy, or memory and pids bound to
// cgroup v1) is not an error: it says so and does nothing; on "v2" that is an error.
//
// Only this process is moved, never another: where <own> holds other processes too (a wrapper shell
// that did not exec, a container's init), nothing is moved and the error names them, since the
// workers could not enable the controllers in <own> anyway. Where this process already is in
// <own>/hybrid-procs (a restart that kept it, systemd's DelegateSubgroup=hybrid-procs), or <own> is
// the hierarchy's root cgroup (where the rule does not apply), it does nothing. The workers, finding
// themselves in hybrid-procs, make their isolate cgroups in <own> and enable the controllers there.
//
// Under systemd, run hybrid with Delegate=yes: below a unit that is not delegated, the cgroups belong
// to systemd.
func PrepareCgroupV2(mode string) (string, error) {
	switch mode {
	case "off", "v1":
		return "", nil
	}
	self, mounts, err := readSelfCgroups()
	if err != nil {
		return "", fmt.Errorf("isolate: cgroup v2: %w", err)
	}
	return prepareV2(mode, self, mounts, os.Getpid(), kernelCgroupFS)
}

// prepareV2 is PrepareCgroupV2 for the process pid, whose /proc/self/cgroup
// is self, with the cgroup mounts given.
func prepareV2(mode string, self selfCgroup, mounts []cgroupMount, pid int, cfs cgroupFS) (string, error) {
	switch mode {
	case "off", "v1":
		return "", nil
	case "", "auto", "v2":
	default:
		return "", fmt.Errorf("isolate: cgroup mode %q: want auto, v1, v2 or off", mode)
	}
	// notHere: cgroup v2 cannot bound the children here, whatever we do.
	notHere := func(why string) (string, error) {
		if mode == "v2" {
			return "", errors.New("isolate: cgroup v2: " + why)
		}
		return "cgroup v2 left as it is: " + why, nil
	}
	own, inLeaf, err := v2Base(mounts, self)
	if err != nil {
		return notHere(err.Error())
	}
	b, err := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return notHere(err.Error())
	}
	if !hasControllers(string(b)) {
		return notHere(fmt.Sprintf("%s: memory and pids controllers not available (cgroup.controllers %q); "+
			"on a hybrid host they are bound to cgroup v1", own, strings.TrimSpace(string(b))))
	}
	// cgroup.type is in every cgroup but the root.
	if _, err := os.Stat(filepath.Join(own, "cgroup.type")); errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("cgroup v2 left as it is: %s is the root cgroup, which may enable controllers below it "+
			"with processes in it", own), nil
	}
	leaf := filepath.Join(own, procsLeaf)
	if why := othersIn(own, pid, inLeaf); why != nil {
		return "", why
	}
	if inLeaf {
		return fmt.Sprintf("cgroup v2 left as it is: this process already is in %s, and %s holds no process", leaf, own), nil
	}
	err = cfs.mkdir(leaf)
	made := err == nil
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return "", prepareError(own, "make "+leaf, err)
	}
	if err := cfs.move(leaf, pid); err != nil {
		if made {
			cfs.rmdir(leaf)
		}
		return "", prepareError(own, fmt.Sprintf("move this process (pid %d) into %s", pid, leaf), err)
	}
	// A process that came in meanwhile (we move no other).
	if why := othersIn(own, pid, true); why != nil {
		return "", why
	}
	return fmt.Sprintf("moved this process (pid %d) into %s, so that %s holds no process: "+
		"the workers make their isolate cgroups in it", pid, leaf, own), nil
}

// othersIn returns why own cannot enable controllers where it holds
// processes other than pid, or nil. moved says whether hybrid's processes
// are in own's leaf hybrid-procs already.
func othersIn(own string, pid int, moved bool) error {
	procs, err := readProcs(own)
	if err != nil {
		return fmt.Errorf("isolate: cgroup v2 %s: %w", own, err)
	}
	procs = slices.DeleteFunc(procs, func(p int) bool { return p == pid })
	if len(procs) == 0 {
		return nil
	}
	what := "nothing was moved"
	if moved {
		what = "hybrid's processes are in " + filepath.Join(own, procsLeaf)
	}
	return fmt.Errorf("isolate: cgroup v2 %s holds %s that are not hybrid's: %s; "+
		"cgroup v2 enables memory and pids below a cgroup only when it holds no process, so isolate children "+
		"get no cgroup v2 limits (%s; hybrid moves no process but its own). "+
		"Run hybrid in a cgroup of its own: a systemd unit with Delegate=yes whose ExecStart does not leave a shell "+
		"behind, or a container where hybrid is the only process of its cgroup namespace",
		own, nProcs(len(procs)), describeProcs(procs), what)
}

// prepareError says why doing what failed, with the likely cause.
func prepareError(own, what string, err error) error {
	hint := ""
	switch {
	case errors.Is(err, syscall.EROFS):
		hint = " (the cgroup2 file system is mounted read-only, as in a container without a writable /sys/fs/cgroup)"
	case errors.Is(err, fs.ErrPermission):
		hint = fmt.Sprintf(" (%s is not delegated to this user? under systemd: Delegate=yes)", own)
	}
	return fmt.Errorf("isolate: cgroup v2: cannot %s%s: %w", what, hint, err)
}

// readProcs lists the processes in a cgroup, as its cgroup.procs does: 0
// for one outside this process's pid namespace.
func readProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid >= 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func nProcs(n int) string {
	if n == 1 {
		return "1 process"
	}
	return strconv.Itoa(n) + " processes"
}

// describeProcs names up to 5 processes for a log: "1 (tini), 57 (sh)".
func describeProcs(pids []int) string {
	var parts []string
	for i, pid := range pids {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(pids)-i))
			break
		}
		if pid == 0 {
			parts = append(parts, "one outside this pid namespace")
			continue
		}
		p := strconv.Itoa(pid)
		if comm, err := os.ReadFile("/proc/" + p + "/comm"); err == nil {
			p += " (" + strings.TrimSpace(string(comm)) + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}
