//go:build linux

package isolate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/internal/tail"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// Config sets a child's limits. Zero fields take defaults.
type Config struct {
	// Timeout is the wall clock of one task (default 10s).
	Timeout time.Duration
	// Memory bounds a child's memory (default 512 MiB).
	Memory uint64
	// CPU bounds a child's CPU time (default: Timeout).
	CPU time.Duration
	// Warm is how many started children wait for a task (default
	// GOMAXPROCS; 0 after defaults means none, set -1 to disable).
	Warm int
	// Reuse is how many tasks a child serves before it exits (default 1).
	Reuse int
	// TestHooks registers the fault-injection workloads in children.
	TestHooks bool
	// Exe is the binary a child runs (default /proc/self/exe, this one);
	// tests outside the binary point it at a built hybrid.
	Exe string
}

// Capabilities are the limits this host lets the isolator enforce, probed
// once at start.
type Capabilities struct {
	CgroupMemory bool   `json:"cgroup_memory"`
	CgroupPids   bool   `json:"cgroup_pids"`
	NoNetwork    bool   `json:"no_network"` // new user + network namespace
	RlimitCPU    bool   `json:"rlimit_cpu"`
	RlimitFiles  bool   `json:"rlimit_files"`
	WallClock    bool   `json:"wall_clock"`
	MemoryLimit  string `json:"memory_limit"` // how memory is bounded
}

// ChildNice is how much nicer than its worker every isolate child runs
// (nice 10 under a worker at 0, at most 19). An isolated task is batch work
// behind admission control; the worker's own threads (accepting, reading
// bodies, answering 503s and health checks) must win the CPU from it.
const ChildNice = 10

// lowerPriority makes the calling thread ChildNice nicer than it is. Linux's
// getpriority returns 20 − nice.
func lowerPriority() error {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return fmt.Errorf("getpriority: %w", err)
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, min(20-prio+ChildNice, 19)); err != nil {
		return fmt.Errorf("setpriority: %w", err)
	}
	return nil
}

// Outcome codes and their statuses.
const (
	CodeTimeout = "isolate_timeout" // 504
	CodeMemory  = "memory_limit"    // 422
	CodeCPU     = "cpu_limit"       // 422
	CodeCrashed = "isolate_crashed" // 500
)

// Isolator starts and runs isolate children. Create it with New; Close it.
type Isolator struct {
	cfg    Config
	log    *slog.Logger
	caps   Capabilities
	cg     *cgroupV1
	dir    string        // empty working directory of every child
	limits string        // childLimits as JSON, for the child's environment
	spares chan *child   // started children waiting for a task
	slots  chan struct{} // free warm slots: a child in spares, or a reusable one in use, holds one
	quit   chan struct{}
	wg     sync.WaitGroup

	probed   chan struct{} // closed when caps and cg are known
	warmOnce sync.Once
	niceWarn atomic.Bool // lowerPriority's failure was logged

	ok, inputErr, timeout, memory, cpu, crashed, started atomic.Uint64
	peakChild                                            atomic.Uint64 // bytes, from the child cgroups
}

// Stats are the isolator's capabilities and outcome counters, for /health.
type Stats struct {
	Limits  Capabilities `json:"limits"`
	Probing bool         `json:"probing,omitempty"`
	Started uint64       `json:"children_started"`
	// PeakChild is the highest memory use of any one child so far (its
	// cgroup's high-water mark; 0 without cgroups). A child's own rusage
	// cannot tell: its Maxrss includes its parent's (FIELD-NOTES).
	PeakChild uint64            `json:"peak_child_bytes"`
	Outcomes  map[string]uint64 `json:"outcomes"`
}

// New probes what the host enforces, logs a WARN for each limit it cannot,
// and starts the warm children.
func New(cfg Config, log *slog.Logger) (*Isolator, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Memory == 0 {
		cfg.Memory = 512 << 20
	}
	if cfg.CPU <= 0 {
		cfg.CPU = cfg.Timeout
	}
	if cfg.Warm == 0 {
		cfg.Warm = runtime.GOMAXPROCS(0)
	}
	cfg.Warm = max(cfg.Warm, 0)
	if cfg.Reuse <= 0 {
		cfg.Reuse = 1
	}
	if cfg.Exe == "" {
		cfg.Exe = "/proc/self/exe"
	}
	dir, err := os.MkdirTemp("", "hybrid-isolate-")
	if err != nil {
		return nil, fmt.Errorf("isolate: working directory: %w", err)
	}
	os.Chmod(dir, 0o555) // empty, and nothing may be created in it
	iso := &Isolator{cfg: cfg, log: log, dir: dir, quit: make(chan struct{}), probed: make(chan struct{}),
		spares: make(chan *child, max(cfg.Warm, 1)), slots: make(chan struct{}, max(cfg.Warm, 1))}
	// Warm slots for the filler; without warm children, one slot still lets
	// a reusable child wait for its next task.
	free := cfg.Warm
	if free == 0 && cfg.Reuse > 1 {
		free = 1
	}
	for range free {
		iso.slots <- struct{}{}
	}
	// The probe execs a child: run it off the worker's start-up path.
	go func() {
		defer close(iso.probed)
		iso.probe()
		lim := childLimits{CPUSeconds: uint64((cfg.CPU + time.Second - 1) / time.Second), NoFile: 16,
			MemoryBytes: cfg.Memory, Reuse: cfg.Reuse, TestHooks: cfg.TestHooks}
		if iso.cg == nil {
			// Without a cgroup, RLIMIT_DATA (private writable mappings, Linux
			// ≥ 4.7) bounds the Go heap; the runtime's reservations are
			// PROT_NONE and do not count.
			lim.DataBytes = cfg.Memory + 64<<20
		}
		b, _ := json.Marshal(lim)
		iso.limits = string(b)
	}()
	return iso, nil
}

func (iso *Isolator) probe() {
	c := &iso.caps
	c.RlimitCPU, c.RlimitFiles, c.WallClock = true, true, true
	cg, why := probeCgroupV1()
	if cg != nil {
		iso.cg = cg
		c.CgroupMemory, c.CgroupPids = true, true
		c.MemoryLimit = "cgroup v1 memory.limit_in_bytes"
	} else {
		c.MemoryLimit = "RLIMIT_DATA + Go soft memory limit"
		iso.log.Warn("isolate: no per-child cgroup: memory bounded by RLIMIT_DATA only; processes not bounded", "reason", why)
	}
	cmd := exec.Command(iso.cfg.Exe, "-h")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET}
	cmd.Env = []string{RoleEnv + "=probe"}
	if err := cmd.Run(); err == nil || isExitError(err) {
		c.NoNetwork = true
	} else {
		iso.log.Warn("isolate: cannot create user and network namespaces: children have network access", "err", err.Error())
	}
	iso.log.Info("isolate limits", "cgroup_memory", c.CgroupMemory, "cgroup_pids", c.CgroupPids,
		"no_network", c.NoNetwork, "memory", iso.cfg.Memory, "timeout", iso.cfg.Timeout.String(),
		"cpu", iso.cfg.CPU.String(), "warm", iso.cfg.Warm, "reuse", iso.cfg.Reuse)
}

func isExitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}

// child is one started isolate process.
type child struct {
	cmd    *exec.Cmd
	in     *bufio.Writer
	stdin  *os.File // our end of its stdin
	stdout *os.File // our end of its stdout
	out    *bufio.Reader
	stderr *tail.Buffer
	cg     *childCgroup
	done   chan struct{} // closed once the process is reaped
	served int
	slot   bool // holds a warm slot
}

func (iso *Isolator) start() (*child, error) {
	cmd := exec.Command(iso.cfg.Exe)
	cmd.Env = []string{RoleEnv + "=" + RoleIsolate, limitsEnv + "=" + iso.limits}
	if v, ok := os.LookupEnv("GORACE"); ok { // only race-built binaries read it
		cmd.Env = append(cmd.Env, "GORACE="+v)
	}
	cmd.Dir = iso.dir
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if iso.caps.NoNetwork {
		attr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET
	}
	cmd.SysProcAttr = attr
	c := &child{cmd: cmd, stderr: &tail.Buffer{Head: 512, Max: 4096}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	// A grandchild holding the stderr pipe must not keep Wait from returning.
	cmd.WaitDelay = 200 * time.Millisecond
	// Our own pipes, not cmd.StdinPipe/StdoutPipe: Wait closes those as soon
	// as the child exits, which can be before its answer was read (a child
	// that answers and exits at once lost its answer 2 times in 10,000).
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	c.stdin, c.stdout = inW, outR
	c.in, c.out = bufio.NewWriterSize(inW, 64<<10), bufio.NewReaderSize(outR, 64<<10)
	closeAll := func() { inR.Close(); inW.Close(); outR.Close(); outW.Close() }
	if iso.cg != nil {
		if c.cg, err = iso.cg.create(iso.cfg.Memory); err != nil {
			closeAll()
			return nil, fmt.Errorf("isolate: cgroup: %w", err)
		}
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // Pdeathsig follows this thread: it lives as long as the child
		// The child inherits this thread's nice value, and every thread it
		// makes inherits the child's. This thread only waits from here on,
		// and ends with the goroutine (it is never unlocked).
		if err := lowerPriority(); err != nil && iso.niceWarn.CompareAndSwap(false, true) {
			iso.log.Warn("isolate: cannot lower the children's CPU priority", "err", err.Error())
		}
		err := cmd.Start()
		started <- err
		if err != nil {
			return
		}
		cmd.Wait()
		close(c.done)
	}()
	err = <-started
	inR.Close() // the child's ends: it holds its own copies now
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		if c.cg != nil {
			c.cg.remove()
		}
		return nil, fmt.Errorf("isolate: start child: %w", err)
	}
	iso.started.Add(1)
	// Into the cgroup before any input is sent: the child reads nothing
	// until the first frame arrives.
	if c.cg != nil {
		if err := c.cg.add(cmd.Process.Pid); err != nil {
			iso.destroy(c)
			return nil, fmt.Errorf("isolate: cgroup: %w", err)
		}
	}
	return c, nil
}

// fill keeps Warm children started and waiting: it starts one for every free
// warm slot, so no more than Warm ever wait.
func (iso *Isolator) fill() {
	defer iso.wg.Done()
	for {
		select {
		case <-iso.slots:
		case <-iso.quit:
			return
		}
		c, err := iso.start()
		for err != nil {
			iso.log.Error("isolate: cannot pre-start a child", "err", err.Error())
			select {
			case <-time.After(time.Second):
				c, err = iso.start()
			case <-iso.quit:
				return
			}
		}
		c.slot = true
		iso.spares <- c // never blocks: a slot was taken for it
	}
}

// take returns a waiting child, or starts one. A child taken for its only
// task gives its warm slot back at once, so that the next spare starts
// while this task runs; a reusable one keeps it until it retires.
func (iso *Isolator) take() (*child, error) {
	<-iso.probed
	// Warm children start with the first isolated task: a worker that never
	// isolates pays nothing for them.
	iso.warmOnce.Do(func() {
		if iso.cfg.Warm > 0 {
			iso.wg.Add(1)
			go iso.fill()
		}
	})
	for {
		select {
		case c := <-iso.spares:
			select {
			case <-c.done: // died while waiting
				iso.retire(c)
				continue
			default:
			}
			if iso.cfg.Reuse == 1 {
				iso.freeSlot(c)
			}
			return c, nil
		default:
			return iso.start()
		}
	}
}

func (iso *Isolator) freeSlot(c *child) {
	if c.slot {
		c.slot = false
		iso.slots <- struct{}{}
	}
}

// retire destroys c and frees its warm slot.
func (iso *Isolator) retire(c *child) {
	iso.destroy(c)
	iso.freeSlot(c)
}

// Run runs workload name on input in a child and returns its output, or a
// *server.Error with the typed outcome. input is not used after Run returns.
func (iso *Isolator) Run(ctx context.Context, name string, p handlers.Params, input []byte) ([]byte, error) {
	c, err := iso.take()
	if err != nil {
		return nil, err
	}
	type result struct {
		h       header
		payload []byte
		err     error
	}
	wrote := make(chan error, 1)
	got := make(chan result, 1)
	go func() { wrote <- writeFrame(c.in, header{Workload: name, Params: p}, input) }()
	go func() {
		h, payload, err := readFrame(c.out)
		got <- result{h, payload, err}
	}()
	timer := time.NewTimer(iso.cfg.Timeout)
	defer timer.Stop()
	var r result
	timedOut := false
	select {
	case r = <-got:
	case <-timer.C:
		timedOut = true
	case <-ctx.Done():
		timedOut = true
	}
	if timedOut {
		iso.retire(c)
		<-wrote // the input is not touched after Run returns
		iso.timeout.Add(1)
		return nil, server.Errorf(fasthttp.StatusGatewayTimeout, CodeTimeout,
			"%s did not finish within the isolate timeout of %v", name, iso.cfg.Timeout)
	}
	werr := <-wrote
	if r.err != nil || werr != nil {
		<-c.done // it died: why?
		out := iso.classify(c, name, r.err, werr)
		iso.retire(c)
		return nil, out
	}
	c.served++
	iso.recycle(c)
	if r.h.Status != 0 {
		iso.inputErr.Add(1)
		return nil, &server.Error{Status: r.h.Status, Code: r.h.Code, Message: r.h.Message}
	}
	iso.ok.Add(1)
	return r.payload, nil
}

// recycle keeps a child with tasks left as a spare (in its warm slot, or in
// a free one), or ends it.
func (iso *Isolator) recycle(c *child) {
	if c.served < iso.cfg.Reuse {
		if !c.slot {
			select {
			case <-iso.slots:
				c.slot = true
			default:
			}
		}
		if c.slot {
			iso.spares <- c // never blocks: it holds a slot
			return
		}
	}
	// Off the request path: the answer is in; reaping the child and emptying
	// its cgroup need not delay it.
	iso.wg.Add(1)
	go func() {
		defer iso.wg.Done()
		c.stdin.Close() // EOF: the child exits by itself
		select {
		case <-c.done:
		case <-time.After(time.Second):
		}
		iso.retire(c)
	}()
}

// classify names why a child died without answering.
func (iso *Isolator) classify(c *child, name string, readErr, writeErr error) error {
	st := c.cmd.ProcessState
	ws, _ := st.Sys().(syscall.WaitStatus)
	ru, _ := st.SysUsage().(*syscall.Rusage)
	var cpu time.Duration
	if ru != nil {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	tail := c.stderr.String()
	switch {
	case c.cg != nil && c.cg.oomKilled(),
		c.cg == nil && (strings.Contains(tail, "out of memory") || strings.Contains(tail, "cannot allocate memory")):
		iso.memory.Add(1)
		return server.Errorf(fasthttp.StatusUnprocessableEntity, CodeMemory,
			"%s exceeded the isolate memory limit of %d MiB", name, iso.cfg.Memory>>20)
	case ws.Signaled() && (ws.Signal() == syscall.SIGKILL || ws.Signal() == syscall.SIGXCPU) &&
		cpu >= iso.cfg.CPU-100*time.Millisecond:
		iso.cpu.Add(1)
		return server.Errorf(fasthttp.StatusUnprocessableEntity, CodeCPU,
			"%s exceeded the isolate CPU limit of %v", name, iso.cfg.CPU)
	}
	iso.crashed.Add(1)
	status := st.String()
	if ws.Signaled() {
		status = "signal " + ws.Signal().String()
	}
	iso.log.Error("isolate child crashed", "workload", name, "child_pid", c.cmd.Process.Pid,
		"status", status, "cpu_ms", cpu.Milliseconds(), "stderr_tail", tail,
		"read_err", fmt.Sprint(readErr), "write_err", fmt.Sprint(writeErr))
	return server.Errorf(fasthttp.StatusInternalServerError, CodeCrashed, "%s crashed in its isolated process", name)
}

// destroy kills the child's whole process group and every task in its
// cgroup, reaps it and removes the cgroup: nothing it started survives.
func (iso *Isolator) destroy(c *child) {
	select {
	case <-c.done:
		// Reaped: if its group is empty its number may belong to a new child
		// now, so only the cgroup (below) may be used to find stragglers.
	default:
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
	c.stdin.Close()
	if c.cg != nil {
		for p := c.cg.peak(); ; {
			old := iso.peakChild.Load()
			if p <= old || iso.peakChild.CompareAndSwap(old, p) {
				break
			}
		}
		c.cg.killAll()
	}
	<-c.done
	c.stdout.Close()
}

// Stats returns the capabilities and outcome counters. It never waits: until
// the start-up probe is done, Probing is true and Limits empty.
func (iso *Isolator) Stats() Stats {
	caps, probing := iso.capabilities()
	return Stats{Limits: caps, Probing: probing, PeakChild: iso.peakChild.Load(), Started: iso.started.Load(), Outcomes: map[string]uint64{
		"ok": iso.ok.Load(), "input_error": iso.inputErr.Load(), CodeTimeout: iso.timeout.Load(),
		CodeMemory: iso.memory.Load(), CodeCPU: iso.cpu.Load(), CodeCrashed: iso.crashed.Load(),
	}}
}

// capabilities returns what the start-up probe found, without waiting for
// it: until it is done, probing is true and the capabilities empty.
func (iso *Isolator) capabilities() (caps Capabilities, probing bool) {
	select {
	case <-iso.probed:
		return iso.caps, false
	default:
		return Capabilities{}, true
	}
}

// Close ends the warm children and removes the working directory.
func (iso *Isolator) Close() error {
	<-iso.probed
	close(iso.quit)
	iso.wg.Wait()
	for {
		select {
		case c := <-iso.spares:
			iso.destroy(c)
		default:
			return os.Remove(iso.dir)
		}
	}
}

// AppendStatsFields appends the fields of Stats() to an open JSON object, as
// encoding/json writes them, without allocating: GET /health serves them on
// every call, beside fields of the caller's (the admission queue).
func (iso *Isolator) AppendStatsFields(o *jsonw.Object) {
	caps, probing := iso.capabilities()
	o.Key("limits")
	l := jsonw.Open(o.B)
	l.Bool("cgroup_memory", caps.CgroupMemory)
	l.Bool("cgroup_pids", caps.CgroupPids)
	l.Bool("no_network", caps.NoNetwork)
	l.Bool("rlimit_cpu", caps.RlimitCPU)
	l.Bool("rlimit_files", caps.RlimitFiles)
	l.Bool("wall_clock", caps.WallClock)
	l.String("memory_limit", caps.MemoryLimit)
	o.B = l.Close()
	if probing {
		o.Bool("probing", true)
	}
	o.Uint("children_started", iso.started.Load())
	o.Uint("peak_child_bytes", iso.peakChild.Load())
	o.Key("outcomes") // encoding/json writes a map's keys sorted
	oc := jsonw.Open(o.B)
	oc.Uint(CodeCPU, iso.cpu.Load())
	oc.Uint("input_error", iso.inputErr.Load())
	oc.Uint(CodeCrashed, iso.crashed.Load())
	oc.Uint(CodeTimeout, iso.timeout.Load())
	oc.Uint(CodeMemory, iso.memory.Load())
	oc.Uint("ok", iso.ok.Load())
	o.B = oc.Close()
}
