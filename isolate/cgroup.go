//go:build linux

package isolate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// cgroupV1 places each child in its own memory and pids cgroup (v1), under
// this process's own cgroups, when they are writable (as root on this kind
// of host). The memory cgroup bounds RSS exactly where RLIMIT_AS cannot (an
// idle Go child maps over 1 GB of address space); the pids cgroup bounds
// processes and threads, so a fork bomb stops at maxTasks.
type cgroupV1 struct {
	memBase, pidsBase string
	seq               atomic.Uint64
}

const maxTasks = 64 // threads included: a Go child runs ~5-10

// probeCgroupV1 returns a usable cgroupV1, or nil and why not.
func probeCgroupV1() (*cgroupV1, string) {
	mem, err1 := ownCgroup("memory")
	pids, err2 := ownCgroup("pids")
	if err1 != nil || err2 != nil {
		return nil, fmt.Sprintf("no cgroup v1 memory and pids hierarchy (%v; %v)", err1, err2)
	}
	cg := &cgroupV1{memBase: mem, pidsBase: pids}
	cg.sweep()
	probe, err := cg.create(16 << 20)
	if err != nil {
		return nil, "cgroup v1 not writable: " + err.Error()
	}
	probe.remove()
	return cg, ""
}

// ownCgroup returns the mounted directory of this process's cgroup in the v1
// hierarchy of controller.
func ownCgroup(controller string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && parts[1] == controller {
			dir := filepath.Join("/sys/fs/cgroup", controller, parts[2])
			if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
				return "", err
			}
			return dir, nil
		}
	}
	return "", fmt.Errorf("no %s controller in /proc/self/cgroup", controller)
}

// sweep removes the isolate cgroups of workers that are gone: a worker
// killed by SIGKILL cannot remove its children's (empty) cgroups. rmdir only
// succeeds on a cgroup without tasks, so a live one is never touched.
func (c *cgroupV1) sweep() {
	for _, base := range []string{c.memBase, c.pidsBase} {
		dirs, _ := filepath.Glob(filepath.Join(base, "hybrid-isolate-*"))
		for _, dir := range dirs {
			var pid, seq int
			if _, err := fmt.Sscanf(filepath.Base(dir), "hybrid-isolate-%d-%d", &pid, &seq); err != nil {
				continue
			}
			if pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH {
				os.Remove(dir)
			}
		}
	}
}

// childCgroup is one child's pair of cgroups.
type childCgroup struct{ mem, pids string }

func (c *cgroupV1) create(memLimit uint64) (*childCgroup, error) {
	var cc *childCgroup
	var err error
	// A name can exist already: a dead worker with our pid (pids wrap) left
	// it. Such a one is empty and goes; otherwise take the next name.
	for range 8 {
		if cc, err = c.mkdir(); err == nil || !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	limit := strconv.FormatUint(memLimit, 10)
	err = write(cc.mem, "memory.limit_in_bytes", limit)
	if err == nil {
		// No swap either, where the kernel accounts it.
		_ = write(cc.mem, "memory.memsw.limit_in_bytes", limit)
		_ = write(cc.mem, "memory.swappiness", "0")
		err = write(cc.pids, "pids.max", strconv.Itoa(maxTasks))
	}
	if err != nil {
		cc.remove()
		return nil, err
	}
	return cc, nil
}

func (c *cgroupV1) mkdir() (*childCgroup, error) {
	name := fmt.Sprintf("hybrid-isolate-%d-%d", os.Getpid(), c.seq.Add(1))
	cc := &childCgroup{mem: filepath.Join(c.memBase, name), pids: filepath.Join(c.pidsBase, name)}
	var made []string
	for _, dir := range []string{cc.mem, cc.pids} {
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
	return cc, nil
}

// add moves pid (its whole thread group) into the cgroups.
func (cc *childCgroup) add(pid int) error {
	p := strconv.Itoa(pid)
	if err := write(cc.mem, "cgroup.procs", p); err != nil {
		return err
	}
	return write(cc.pids, "cgroup.procs", p)
}

// oomKilled reports whether the memory limit killed a task.
func (cc *childCgroup) oomKilled() bool {
	b, _ := os.ReadFile(filepath.Join(cc.mem, "memory.oom_control"))
	for _, line := range bytes.Split(b, []byte("\n")) {
		if f := bytes.Fields(line); len(f) == 2 && string(f[0]) == "oom_kill" && string(f[1]) != "0" {
			return true
		}
	}
	b, _ = os.ReadFile(filepath.Join(cc.mem, "memory.failcnt"))
	return len(b) > 0 && strings.TrimSpace(string(b)) != "0"
}

// peak returns the cgroup's memory high-water mark in bytes.
func (cc *childCgroup) peak() uint64 {
	b, _ := os.ReadFile(filepath.Join(cc.mem, "memory.max_usage_in_bytes"))
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// killAll kills every task left in the cgroup (grandchildren included) and
// removes it.
func (cc *childCgroup) killAll() {
	for range 50 {
		pids := tasks(cc.pids)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(2 * time.Millisecond)
	}
	cc.remove()
}

func (cc *childCgroup) remove() {
	for _, dir := range []string{cc.mem, cc.pids} {
		for range 50 {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func tasks(dir string) []int {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func write(dir, file, value string) error {
	return os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644)
}
