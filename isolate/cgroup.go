//go:build linux

package isolate

// Cgroups bound each child's memory (RSS, exactly, where RLIMIT_AS cannot:
// an idle Go child maps over 1 GB of address space) and its processes and
// threads (a fork bomb stops at maxTasks).
//
// Making and removing a child's cgroups costs ~0.2 ms of this process's CPU
// (more with a Go child, and more again in kernel workers after the rmdir)
// against ~4 µs to reuse them (BenchmarkCgroupPerTask, BenchmarkCgroupReuse),
// so the directories are pooled and reused: a child
// runs in a directory taken from the pool (Take) and, once it is done, every
// task left in the directory is killed, its counters are reset and it goes
// back to the pool (Release). A directory that cannot be emptied or reset
// within a bound is removed, never reused. The pool grows on demand (so its
// size follows the isolator's concurrency: warm spares plus running
// children) and keeps up to maxIdle idle directories; Close removes them.
//
// Counters that the kernel cannot reset (v1 oom_kill, v2 memory.events) are
// read when a directory goes back to the pool, and a slot reports only their
// increase since then.
//
// Directory names carry the worker's pid, so a worker that starts sweeps
// (kills the tasks of, and removes) the directories of workers that are gone.
//
// The limit files are owned by root and mode 0644 as the kernel makes them,
// and the directories are never chowned: a child running as another uid
// cannot raise its own limits.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// limiter bounds one child's memory and processes through a cgroup backend.
type limiter interface {
	// Name says which mechanism enforces the limits, for /health and logs:
	// "cgroup v1" or "cgroup v2".
	Name() string
	// Take returns an empty cgroup with the limits set and counters reset.
	Take() (cgroupSlot, error)
	// Close removes every cgroup of the pool; slots still out are removed when released.
	Close()
}

// cgroupSlot is one child's cgroup, from Take to Release. Read OOMKilled and
// Peak before Release: after it they report nothing. Release is quickest
// once the child is reaped (a v1 cgroup counts a zombie until then), and
// can take up to ~0.4 s when a task will not die: keep it off the
// request path.
type cgroupSlot interface {
	// CloneFD returns a directory fd to start a child in this cgroup (v2), or -1.
	// The slot owns the fd: it stays open until Release; do not close it.
	CloneFD() int
	// Add moves pid (its whole thread group) into the cgroup (v1, or v2 without CloneFD).
	Add(pid int) error
	// OOMKilled reports whether the memory limit killed a task since Take.
	OOMKilled() bool
	// Peak is the memory high-water mark in bytes since Take (0 if unknown).
	Peak() uint64
	// Release kills every task left in the cgroup, then returns it to the pool (or removes it).
	Release()
}

const (
	maxIdle = 8 // idle cgroups a pool keeps

	// emptyWithin bounds how long Release waits for the killed tasks of a
	// cgroup to be gone, and removal for an rmdir to succeed.
	emptyWithin = 200 * time.Millisecond
)

// newLimiter picks a backend: mode is "auto" (v2 if usable, else v1, else nil), "v1", "v2" or "off" (always nil, "").
// It returns nil and the reason when none is usable; memLimit and maxTasks are fixed for the limiter's life.
// log gets the limiter's later errors (a cgroup that cannot be removed).
func newLimiter(mode string, memLimit uint64, maxTasks int, log *slog.Logger) (limiter, string) {
	switch mode {
	case "off":
		return nil, ""
	case "v1":
		return probeV1(log, memLimit, maxTasks)
	case "v2":
		return probeV2(log, memLimit, maxTasks)
	case "auto", "":
		l, why2 := probeV2(log, memLimit, maxTasks)
		if l != nil {
			return l, ""
		}
		l, why1 := probeV1(log, memLimit, maxTasks)
		if l != nil {
			return l, ""
		}
		return nil, why2 + "; " + why1
	}
	return nil, fmt.Sprintf("unknown cgroup mode %q (want auto, v1, v2 or off)", mode)
}

// errLimiterClosed is Take's error after Close.
var errLimiterClosed = errors.New("isolate: cgroup pool closed")

// cgroupDir is one reusable child cgroup of a backend. Only the holder of
// its slot uses it, so it needs no lock.
type cgroupDir interface {
	path() string
	cloneFD() int
	add(pid int) error
	oomKills() uint64 // never reset: read as a baseline when the dir is reset
	peak() uint64     // since reset, or 0
	// empty kills every task in the cgroup and waits, at most emptyWithin,
	// until none is left.
	empty() error
	// reset readies an empty cgroup for its next child.
	reset() error
	// remove removes the cgroup (and closes what it holds open).
	remove() error
}

// cgroupPool is a limiter over one backend's directories.
type cgroupPool struct {
	name    string
	log     *slog.Logger
	newDir  func() (cgroupDir, error)
	finish  func() // after Close, once no slot is out: the backend's cleanup
	maxIdle int

	mu     sync.Mutex
	idle   []idleDir // LIFO: the most recently used one is taken first
	out    int       // slots taken and not yet back
	closed bool
}

type idleDir struct {
	d       cgroupDir
	oomBase uint64
}

func (p *cgroupPool) Name() string { return p.name }

func (p *cgroupPool) Take() (cgroupSlot, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errLimiterClosed
	}
	p.out++
	if n := len(p.idle); n > 0 {
		e := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return &slot{p: p, d: e.d, oomBase: e.oomBase}, nil
	}
	p.mu.Unlock()
	d, err := p.newDir()
	if err != nil {
		p.back()
		return nil, err
	}
	return &slot{p: p, d: d, oomBase: d.oomKills()}, nil
}

func (p *cgroupPool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	last := p.out == 0
	p.mu.Unlock()
	for _, e := range idle {
		p.discard(e.d)
	}
	if last && p.finish != nil {
		p.finish()
	}
}

// put empties and resets d, and keeps it idle, or removes it.
func (p *cgroupPool) put(d cgroupDir) {
	err := d.empty()
	if err == nil {
		err = d.reset()
	}
	var base uint64
	if err == nil {
		base = d.oomKills()
	} else {
		p.log.Warn("isolate: cgroup not reused", "cgroup", d.path(), "err", err.Error())
	}
	p.mu.Lock()
	keep := err == nil && !p.closed && len(p.idle) < p.maxIdle
	if keep {
		p.idle = append(p.idle, idleDir{d, base})
		p.out--
	}
	p.mu.Unlock()
	if !keep {
		p.discard(d)
		p.back()
	}
}

// back counts a slot back in, and cleans up after the last one once closed.
func (p *cgroupPool) back() {
	p.mu.Lock()
	p.out--
	last := p.closed && p.out == 0
	p.mu.Unlock()
	if last && p.finish != nil {
		p.finish()
	}
}

func (p *cgroupPool) discard(d cgroupDir) {
	if err := d.remove(); err != nil {
		p.log.Error("isolate: cgroup leaked: cannot remove it", "cgroup", d.path(), "err", err.Error())
	}
}

// slot is one Take of a directory.
type slot struct {
	p        *cgroupPool
	d        cgroupDir
	oomBase  uint64
	released atomic.Bool
}

func (s *slot) CloneFD() int {
	if s.released.Load() {
		return -1
	}
	return s.d.cloneFD()
}

func (s *slot) Add(pid int) error {
	if s.released.Load() {
		return errors.New("isolate: cgroup slot used after Release")
	}
	return s.d.add(pid)
}

func (s *slot) OOMKilled() bool { return !s.released.Load() && s.d.oomKills() > s.oomBase }

func (s *slot) Peak() uint64 {
	if s.released.Load() {
		return 0
	}
	return s.d.peak()
}

func (s *slot) Release() {
	if !s.released.Swap(true) {
		s.p.put(s.d)
	}
}

// cgroupV1 makes child cgroups in this process's own cgroup v1 memory and
// pids hierarchies.
type cgroupV1 struct {
	memBase, pidsBase string
	maxTasks          int
}

// cgroupSeq numbers this process's isolate cgroups, across all its limiters:
// a name with our pid that exists already was left by a dead process.
var cgroupSeq atomic.Uint64

// probeV1 returns a v1 limiter, or nil and why not. It sweeps the cgroups
// of dead workers, and makes a first cgroup to prove the hierarchies
// writable; that cgroup is the pool's first idle one.
func probeV1(log *slog.Logger, memLimit uint64, maxTasks int) (limiter, string) {
	c, why := findV1()
	if c == nil {
		return nil, why
	}
	c.maxTasks = maxTasks
	c.sweep()
	d, err := c.makeDir(memLimit)
	if err != nil {
		return nil, "cgroup v1 not writable: " + err.Error()
	}
	return &cgroupPool{name: "cgroup v1", log: log, maxIdle: maxIdle,
		newDir: func() (cgroupDir, error) { return c.makeDir(memLimit) },
		idle:   []idleDir{{d, d.oomKills()}}}, ""
}

// findV1 finds this process's cgroups in the v1 memory and pids hierarchies.
func findV1() (*cgroupV1, string) {
	self, mounts, err := readSelfCgroups()
	if err != nil {
		return nil, "cgroup v1: " + err.Error()
	}
	mem, err1 := v1Dir(mounts, self, "memory")
	pids, err2 := v1Dir(mounts, self, "pids")
	if err1 != nil || err2 != nil {
		return nil, fmt.Sprintf("no cgroup v1 memory and pids hierarchy (%v; %v)", err1, err2)
	}
	return &cgroupV1{memBase: mem, pidsBase: pids}, ""
}

// sweep kills the tasks left in, and removes, the isolate cgroups of workers
// that are gone: a worker killed by SIGKILL cannot.
func (c *cgroupV1) sweep() {
	for _, base := range []string{c.memBase, c.pidsBase} {
		dirs, _ := filepath.Glob(filepath.Join(base, "hybrid-isolate-*"))
		for _, dir := range dirs {
			if pid, ok := isolatePid(dir); ok && workerGone(pid) {
				emptyCgroup(true, dir)
				removeDir(os.Remove, dir)
			}
		}
	}
}

// isolatePid returns the pid in the name of an isolate cgroup,
// hybrid-isolate-<pid>-<seq>.
func isolatePid(dir string) (int, bool) {
	rest, ok := strings.CutPrefix(filepath.Base(dir), "hybrid-isolate-")
	p, seq, ok2 := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(p)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return pid, ok && ok2 && err == nil && err2 == nil
}

// workerGone reports whether pid, a worker's, is no longer running.
func workerGone(pid int) bool {
	return pid > 0 && pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH
}

// cgroupV1Dir is one child's pair of v1 cgroups, with the files used per
// child held open.
type cgroupV1Dir struct {
	mem, pids            string
	files                cgroupFiles
	memProcs, pidsProcs  *os.File // cgroup.procs, written by add
	pidsCurrent          *os.File // tasks in the cgroup, zombies until reaped
	oomControl, maxUsage *os.File // memory.oom_control; memory.max_usage_in_bytes, also reset
	failcnt              *os.File // memory.failcnt, only where oom_control has no oom_kill (Linux < 4.13)
}

func (c *cgroupV1) makeDir(memLimit uint64) (*cgroupV1Dir, error) {
	var d *cgroupV1Dir
	var err error
	// A name can exist already: a dead worker with our pid (pids wrap) left
	// it. Such a one is empty and goes; otherwise take the next name.
	for range 8 {
		if d, err = c.mkdir(); err == nil || !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	limit := strconv.FormatUint(memLimit, 10)
	err = writeFile(d.mem, "memory.limit_in_bytes", limit)
	if err == nil {
		// No swap either, where the kernel accounts it.
		_ = writeFile(d.mem, "memory.memsw.limit_in_bytes", limit)
		_ = writeFile(d.mem, "memory.swappiness", "0")
		err = writeFile(d.pids, "pids.max", strconv.Itoa(c.maxTasks))
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

func (c *cgroupV1) mkdir() (*cgroupV1Dir, error) {
	name := fmt.Sprintf("hybrid-isolate-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	d := &cgroupV1Dir{mem: filepath.Join(c.memBase, name), pids: filepath.Join(c.pidsBase, name)}
	var made []string
	for _, dir := range []string{d.mem, d.pids} {
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrExist) && os.Remove(dir) == nil { // stale and empty
			err = os.Mkdir(dir, 0o755)
		}
		if err != nil {
			for _, m := range made {
				os.Remove(m)
			}
			return nil, err
		}
		made = append(made, dir)
	}
	return d, nil
}

func (d *cgroupV1Dir) open() error {
	var err error
	open := func(f **os.File, dir, name string, flag int) {
		if err == nil {
			*f, err = d.files.open(filepath.Join(dir, name), flag)
		}
	}
	open(&d.memProcs, d.mem, "cgroup.procs", os.O_WRONLY)
	open(&d.pidsProcs, d.pids, "cgroup.procs", os.O_WRONLY)
	open(&d.pidsCurrent, d.pids, "pids.current", os.O_RDONLY)
	open(&d.oomControl, d.mem, "memory.oom_control", os.O_RDONLY)
	open(&d.maxUsage, d.mem, "memory.max_usage_in_bytes", os.O_RDWR)
	if err != nil {
		return err
	}
	if _, ok := preadKeyed(d.oomControl, "oom_kill"); !ok {
		open(&d.failcnt, d.mem, "memory.failcnt", os.O_RDWR)
	}
	return err
}

func (d *cgroupV1Dir) path() string { return d.mem }
func (d *cgroupV1Dir) cloneFD() int { return -1 }

// add moves pid (its whole thread group) into the cgroups: the pids one
// first, so that a task is in the memory one only if it is in both, and
// pids.current tells whether any is left.
func (d *cgroupV1Dir) add(pid int) error {
	p := strconv.Itoa(pid)
	if err := pwrite(d.pidsProcs, p); err != nil {
		return err
	}
	return pwrite(d.memProcs, p)
}

// oomKills is the count of tasks the memory limit killed (Linux ≥ 4.13),
// or else of the times the limit was hit.
func (d *cgroupV1Dir) oomKills() uint64 {
	if d.failcnt != nil {
		n, _ := preadUint(d.failcnt)
		return n
	}
	n, _ := preadKeyed(d.oomControl, "oom_kill")
	return n
}

func (d *cgroupV1Dir) peak() uint64 {
	n, _ := preadUint(d.maxUsage)
	return n
}

func (d *cgroupV1Dir) empty() error {
	if n, ok := preadUint(d.pidsCurrent); ok && n == 0 {
		return nil // the child was reaped and left nothing
	}
	return emptyCgroup(true, d.pids, d.mem)
}

// reset sets the high-water mark to the current use (the page cache the last
// child left charged; the kernel reclaims it under the limit), and the hit
// count, where it is used, to 0.
func (d *cgroupV1Dir) reset() error {
	err := pwrite(d.maxUsage, "0")
	if err == nil && d.failcnt != nil {
		err = pwrite(d.failcnt, "0")
	}
	return err
}

func (d *cgroupV1Dir) remove() error {
	d.files.close()
	return errors.Join(removeDir(os.Remove, d.mem), removeDir(os.Remove, d.pids))
}

// emptyCgroup kills (with kill) every task in the cgroup dirs until their
// cgroup.procs are empty, for at most emptyWithin. Without kill it only
// waits (cgroup.kill was written). A task in a cgroup cannot leave it by
// itself, and a task that forks puts its child in the same cgroup, so the
// loop ends unless a task cannot die (uninterruptible sleep).
func emptyCgroup(kill bool, dirs ...string) error {
	deadline := time.Now().Add(emptyWithin)
	for pause := 100 * time.Microsecond; ; pause = min(2*pause, 5*time.Millisecond) {
		var left []int
		for _, dir := range dirs {
			left = append(left, cgroupProcs(dir)...)
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("isolate: cgroup %s: tasks %v left after %v", dirs[0], left, emptyWithin)
		}
		if kill {
			for _, pid := range left {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(pause)
	}
}

// cgroupProcs lists the processes in a cgroup (never 0 or less: kill(-1)
// would signal every process).
func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for f := range bytes.FieldsSeq(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeDir removes an empty cgroup, retrying within emptyWithin: the
// kernel may hold it a moment after its last task exits.
func removeDir(rmdir func(string) error, dir string) error {
	deadline := time.Now().Add(emptyWithin)
	for {
		err := rmdir(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// writeFile writes value to a cgroup file, which must exist.
func writeFile(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}

// cgroupFiles are the cgroup files a directory holds open: opening a
// cgroupfs file costs ~9 µs, a read or write through an open one ~1 µs
// (measured), and the kernel makes a file's content afresh on every read
// from offset 0 (except v1's cgroup.procs and tasks, cached for a second).
type cgroupFiles []*os.File

func (fs *cgroupFiles) open(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	*fs = append(*fs, f)
	return f, nil
}

func (fs *cgroupFiles) close() {
	for _, f := range *fs {
		f.Close()
	}
	*fs = nil
}

// pwrite writes value to an open cgroup file.
func pwrite(f *os.File, value string) error {
	_, err := f.WriteAt([]byte(value), 0)
	return err
}

// pread reads an open cgroup file (a small one) from its start.
func pread(f *os.File, buf []byte) []byte {
	n, _ := f.ReadAt(buf, 0)
	return buf[:n]
}

func preadUint(f *os.File) (uint64, bool) {
	var buf [64]byte
	n, err := strconv.ParseUint(string(bytes.TrimSpace(pread(f, buf[:]))), 10, 64)
	return n, err == nil
}

// preadKeyed reads the value of key in a "key value" per line file
// (memory.oom_control, memory.events, cgroup.events).
func preadKeyed(f *os.File, key string) (uint64, bool) {
	var buf [1024]byte
	for line := range bytes.Lines(pread(f, buf[:])) {
		if k, v, ok := bytes.Cut(bytes.TrimSpace(line), []byte(" ")); ok && string(k) == key {
			n, err := strconv.ParseUint(string(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// selfCgroup is this process's membership, from /proc/self/cgroup.
type selfCgroup struct {
	v1    map[string]string // v1 controller (or name=...) → path
	v2    string            // path in the unified hierarchy ("0::/path")
	hasV2 bool
}

func parseProcCgroup(b []byte) selfCgroup {
	s := selfCgroup{v1: map[string]string{}}
	for line := range strings.Lines(string(b)) {
		id, rest, ok1 := strings.Cut(strings.TrimSpace(line), ":")
		ctrls, path, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(path, "/") {
			continue
		}
		if id == "0" && ctrls == "" {
			s.v2, s.hasV2 = path, true
			continue
		}
		for c := range strings.SplitSeq(ctrls, ",") {
			if c != "" {
				s.v1[c] = path
			}
		}
	}
	return s
}

// cgroupMount is one mount of a cgroup hierarchy, from /proc/self/mountinfo.
type cgroupMount struct {
	dir, root   string   // mount point, and the hierarchy's directory mounted there
	v2          bool     // cgroup2
	controllers []string // v1: the hierarchy's controllers (its super options)
}

// parseMountinfo returns the cgroup mounts in a mountinfo file (proc(5)):
// "36 35 98:0 /root /mount/point rw,noatime master:1 - cgroup cgroup rw,memory".
func parseMountinfo(b []byte) []cgroupMount {
	var ms []cgroupMount
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		m := cgroupMount{root: unescapeMount(f[3]), dir: unescapeMount(f[4])}
		switch g[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			if len(g) >= 3 {
				m.controllers = strings.Split(g[2], ",")
			}
		default:
			continue
		}
		ms = append(ms, m)
	}
	return ms
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// under returns the directory of cgroup path in mount m.
func (m cgroupMount) under(path string) (string, bool) {
	if strings.Contains(path, "/..") { // outside our cgroup namespace
		return "", false
	}
	rel, ok := strings.CutPrefix(path, m.root)
	if m.root == "/" {
		rel, ok = path, true
	} else if ok && rel != "" && rel[0] != '/' {
		ok = false
	}
	if !ok {
		return "", false
	}
	return filepath.Join(m.dir, rel), true
}

// v1Dir returns the directory of our cgroup in the v1 hierarchy of controller.
func v1Dir(mounts []cgroupMount, self selfCgroup, controller string) (string, error) {
	path, ok := self.v1[controller]
	if !ok {
		return "", fmt.Errorf("no %s controller in /proc/self/cgroup", controller)
	}
	for _, m := range mounts {
		if m.v2 || !slices.Contains(m.controllers, controller) {
			continue
		}
		if dir, ok := m.under(path); ok {
			return dir, nil
		}
	}
	return "", fmt.Errorf("cgroup %s of the %s hierarchy is not mounted here", path, controller)
}

// v2Dir returns the directory of our cgroup in the unified hierarchy.
func v2Dir(mounts []cgroupMount, self selfCgroup) (string, error) {
	if !self.hasV2 {
		return "", errors.New("no unified hierarchy in /proc/self/cgroup")
	}
	for _, m := range mounts {
		if !m.v2 {
			continue
		}
		if dir, ok := m.under(self.v2); ok {
			return dir, nil
		}
	}
	return "", fmt.Errorf("cgroup2 %s is not mounted here", self.v2)
}

func readSelfCgroups() (selfCgroup, []cgroupMount, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return selfCgroup{}, nil, err
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return selfCgroup{}, nil, err
	}
	return parseProcCgroup(b), parseMountinfo(mi), nil
}
