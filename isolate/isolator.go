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
	"os/user"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/internal/fds"
	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/internal/seccomp"
	"github.com/hybrid-server/hybrid/internal/tail"
	"golang.org/x/sys/unix"
)

// Config sets a child's limits. Zero fields take the defaults of
// [DefaultConfig]; [Config.Validate] reports a bad one.
type Config struct {
	// Timeout is the wall clock of one task, the whole exchange with the
	// child included.
	Timeout time.Duration
	// Memory bounds a child's memory.
	Memory uint64
	// CPU bounds a child's CPU time (default: Timeout).
	CPU time.Duration
	// Warm is how many started children wait for a task (default
	// GOMAXPROCS; set -1 for none).
	Warm int
	// Reuse is how many tasks a child serves before it exits (default 1).
	Reuse int
	// Cgroup picks what bounds a child's memory and processes: "auto" (v2
	// where usable, else v1, else none), "v1", "v2", or "off" (RLIMIT_DATA
	// and the seccomp filter only).
	Cgroup string
	// User is who children run as when this process is root; nil picks the
	// user "hybrid-isolate" if it exists, else nobody (65534:65534). A
	// process that is not root cannot change user: its children run as it
	// does, and the seccomp filter keeps them from touching anything else.
	User *User
	// Strict makes New fail when the host cannot enforce every limit (a
	// memory bound, the seccomp filter, a user that is not root).
	Strict bool
	// Exe is the binary a child runs (default /proc/self/exe, this one);
	// tests outside the binary point it at a built hybrid.
	Exe string
}

// User is a uid and gid.
type User struct{ UID, GID uint32 }

// DefaultConfig returns the defaults hybrid serve uses.
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, Memory: 512 << 20, Warm: runtime.GOMAXPROCS(0), Reuse: 1,
		Cgroup: "auto", Exe: "/proc/self/exe"}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Timeout < 0 || c.CPU < 0:
		return errors.New("isolate: timeout and CPU limit must be positive")
	case c.Memory > 0 && c.Memory < 32<<20:
		return fmt.Errorf("isolate: memory limit %d: want at least 32 MiB (a Go child needs ~8, and its heap)", c.Memory)
	case c.Reuse < 0:
		return fmt.Errorf("isolate: reuse %d: want ≥ 1", c.Reuse)
	case c.Warm < -1:
		return fmt.Errorf("isolate: warm %d: want ≥ 0, or -1 for none", c.Warm)
	}
	switch c.Cgroup {
	case "", "auto", "v1", "v2", "off":
	default:
		return fmt.Errorf("isolate: cgroup %q: want auto, v1, v2 or off", c.Cgroup)
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.Memory == 0 {
		c.Memory = d.Memory
	}
	if c.CPU == 0 {
		c.CPU = c.Timeout
	}
	if c.Warm == 0 {
		c.Warm = d.Warm
	}
	c.Warm = max(c.Warm, 0)
	if c.Reuse == 0 {
		c.Reuse = d.Reuse
	}
	if c.Cgroup == "" {
		c.Cgroup = d.Cgroup
	}
	if c.Exe == "" {
		c.Exe = d.Exe
	}
	return c
}

// Capabilities name the mechanism that enforces each limit on this host,
// probed once at start; "none" where nothing does.
type Capabilities struct {
	Memory    string `json:"memory"`
	Processes string `json:"processes"`
	Network   string `json:"network"`
	Files     string `json:"files"`
	CPU       string `json:"cpu"`
	WallClock string `json:"wall_clock"`
	User      string `json:"user"`
}

// ChildNice is how much nicer than its worker every isolate child runs
// (nice 10 under a worker at 0, at most 19). An isolated task is batch work
// behind admission control; the worker's own threads (accepting, reading
// bodies, answering 503s and health checks) must win the CPU from it.
const ChildNice = 10

// maxTasks bounds a child's processes and threads where a pids cgroup
// exists (a Go child runs ~5-10 threads; the seccomp filter refuses new
// processes anyway).
const maxTasks = 64

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

// Job is one task for a child: the name the child's lookup knows, its
// parameters, and the largest output the caller accepts (a longer reply is
// a lie: the child is killed and the run is a crash).
type Job struct {
	Name      string
	Params    map[string]string
	MaxOutput int
	// Codes, when set, are the error codes the caller accepts from the
	// job, each with its status: a *JobError with another is a lie (the
	// child is killed, and the run is a *CrashError).
	Codes map[string]int
	// Heap, when set, is about how much heap the job will grow: the child
	// maps it ahead as transparent huge pages (see hugeHeap), which cuts
	// the page faults of a cold heap ~10× for a job of tens of MiB and
	// costs ~1 ms of its own. Capped at half the memory limit.
	Heap int
}

// Isolator starts and runs isolate children. Create it with New; Close it.
type Isolator struct {
	cfg    Config
	log    *slog.Logger
	caps   Capabilities
	lim    limiter             // nil: no cgroup
	cred   *syscall.Credential // nil: children run as this process
	dir    string              // empty working directory of every child
	limits string              // childLimits as JSON, for the child's environment
	spares chan *child         // started children waiting for a task
	slots  chan struct{}       // free warm slots: a child in spares, or a reusable one in use, holds one
	quit   chan struct{}
	wg     sync.WaitGroup

	probed    chan struct{} // closed when caps, lim, cred and limits are known
	probeErr  error         // with Strict: the limit the host cannot enforce
	seccompOn bool          // children install the filter
	warmOnce  sync.Once
	niceWarn  atomic.Bool // lowerPriority's failure was logged

	limitsJSON atomic.Pointer[[]byte] // the limits object of /health, once the probe is done

	ok, inputErr, timeout, memory, cpu, violation, crashed, started atomic.Uint64
	peakChild                                                       atomic.Uint64 // bytes, from the child cgroups
}

// Stats are the isolator's capabilities and outcome counters, for /health.
type Stats struct {
	Limits  Capabilities `json:"limits"`
	Probing bool         `json:"probing,omitempty"`
	Started uint64       `json:"children_started"`
	// PeakChild is the highest memory use of any one child so far (its
	// cgroup's high-water mark; 0 without cgroups). A child's own rusage
	// cannot tell: its Maxrss includes its parent's.
	PeakChild uint64            `json:"peak_child_bytes"`
	Outcomes  map[string]uint64 `json:"outcomes"`
}

// New validates cfg and starts probing what the host enforces, off the
// caller's path; it logs a WARN for each limit the host cannot enforce.
// With cfg.Strict it waits for the probe and fails instead, naming the
// missing limit. Warm children start with the first task.
func New(cfg Config, log *slog.Logger) (*Isolator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// Children get stdin, stdout and stderr, and nothing this process
	// inherited (hybrid's main does this first; a program embedding the
	// isolator may not).
	if err := fds.CloseOnExec(3); err != nil {
		return nil, fmt.Errorf("isolate: marking inherited descriptors close-on-exec: %w", err)
	}
	// The pid in the name lets a primary remove it should this process
	// be killed (cmd/hybrid's sweepTemp).
	dir, err := os.MkdirTemp("", fmt.Sprintf("hybrid-isolate-%d-", os.Getpid()))
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
		iso.probeErr = iso.probe()
	}()
	if cfg.Strict {
		<-iso.probed
		if iso.probeErr != nil {
			iso.Close()
			return nil, iso.probeErr
		}
	}
	return iso, nil
}

// probe learns what this host enforces and sets up the children's limits.
// It returns the first missing limit (an error only Strict acts on).
func (iso *Isolator) probe() error {
	var missing []string
	c := &iso.caps
	c.CPU, c.WallClock = "RLIMIT_CPU", "timer + SIGKILL of the process group"
	c.Files = "RLIMIT_NOFILE 16, RLIMIT_FSIZE 0"
	lim, why := newLimiter(iso.cfg.Cgroup, iso.cfg.Memory, maxTasks, iso.log)
	if lim != nil {
		iso.lim = lim
		c.Memory = lim.Name() + " memory limit"
		c.Processes = lim.Name() + " pids limit"
	} else {
		c.Memory, c.Processes = "RLIMIT_DATA + Go soft memory limit", "none"
		if iso.cfg.Cgroup == "v1" || iso.cfg.Cgroup == "v2" { // asked for by name: not had
			missing = append(missing, "cgroup "+iso.cfg.Cgroup+" ("+why+")")
		}
		iso.log.Warn("isolate: no cgroup for children: memory bounded by RLIMIT_DATA, processes by RLIMIT_NPROC and the seccomp filter",
			"mode", iso.cfg.Cgroup, "reason", why)
	}
	lims := childLimits{CPUSeconds: uint64((iso.cfg.CPU + time.Second - 1) / time.Second), NoFile: 16,
		MemoryBytes: iso.cfg.Memory, Reuse: iso.cfg.Reuse, Seccomp: seccomp.Supported(), Threads: maxTasks}
	if iso.lim == nil {
		// Without a cgroup, RLIMIT_DATA (private writable mappings, Linux
		// ≥ 4.7; the filter refuses shared ones) bounds the Go heap; the
		// runtime's reservations are PROT_NONE and do not count. And
		// RLIMIT_NPROC bounds the threads of the children's user.
		lims.DataBytes = iso.cfg.Memory + 64<<20
		lims.NProc = childNProc
		c.Processes = fmt.Sprintf("RLIMIT_NPROC %d for the children's user", childNProc)
	}
	iso.setLimits(lims)
	// First the filter, as this process's user: does it install here? A
	// failure is retried (a fork can fail for want of memory or pids).
	if err := iso.probeRetry(nil); err != nil && lims.Seccomp {
		iso.log.Error("isolate: the seccomp filter cannot be installed: children can open files, sockets and processes",
			"err", err.Error())
		lims.Seccomp = false
		iso.setLimits(lims)
	}
	iso.seccompOn = lims.Seccomp
	// Then the children's own user.
	if os.Geteuid() == 0 {
		u := iso.cfg.User
		if u == nil {
			u = defaultUser()
		}
		cred := &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{}}
		c.User = fmt.Sprintf("uid %d gid %d", u.UID, u.GID)
		err := iso.probeRetry(cred)
		var se *startError
		switch {
		case err == nil:
			iso.cred = cred
		case errors.As(err, &se) && (errors.Is(se.err, syscall.EACCES) || errors.Is(se.err, syscall.EPERM)):
			// The binary is not executable by that user. Children run as
			// root with every capability dropped, under the filter.
			iso.log.Error("isolate: children cannot start as their own user; they run as root without capabilities, under the seccomp filter",
				"user", c.User, "err", err.Error())
			missing = append(missing, "a user other than root for children ("+err.Error()+")")
			c.User = "root without capabilities (could not start as " + c.User + ")"
		default:
			// Not the user's fault: keep it, and let each start report.
			iso.log.Error("isolate: the probe of the children's user failed; keeping it", "user", c.User, "err", err.Error())
			iso.cred = cred
		}
	} else {
		c.User = fmt.Sprintf("uid %d (this process's: not root, cannot change user)", os.Geteuid())
	}
	if lims.Seccomp {
		c.Network = "seccomp: no socket"
		c.Files += "; seccomp: no open"
		c.Processes += "; seccomp: no new process"
	} else {
		c.Network = "none"
		missing = append(missing, "the seccomp filter (no network, files or processes)")
	}
	iso.log.Info("isolate limits", "memory", c.Memory, "processes", c.Processes, "network", c.Network,
		"files", c.Files, "user", c.User, "memory_bytes", iso.cfg.Memory, "timeout", iso.cfg.Timeout.String(),
		"cpu", iso.cfg.CPU.String(), "warm", iso.cfg.Warm, "reuse", iso.cfg.Reuse)
	if len(missing) > 0 {
		return fmt.Errorf("isolate: this host cannot enforce %s", strings.Join(missing, ", nor "))
	}
	return nil
}

func (iso *Isolator) setLimits(l childLimits) {
	b, _ := json.Marshal(l)
	iso.limits = string(b)
}

// childNProc is the RLIMIT_NPROC of children without a pids cgroup: it
// bounds the processes and threads of the children's user (all children of
// every worker together, ~10 threads each), well under the host's pid_max.
const childNProc = 1024

// probeTimeout bounds one probe child.
const probeTimeout = 10 * time.Second

// startError is a probe child that could not be started at all (exec).
type startError struct{ err error }

func (e *startError) Error() string { return "start: " + e.err.Error() }

// probeRetry is runProbe, tried three times over about a second: a fork
// can fail for a moment (memory, pids) without anything being wrong.
func (iso *Isolator) probeRetry(cred *syscall.Credential) error {
	var err error
	for i := range 3 {
		if err = iso.runProbe(cred); err == nil {
			return nil
		}
		var se *startError
		if errors.As(err, &se) && (errors.Is(se.err, syscall.EACCES) || errors.Is(se.err, syscall.EPERM)) {
			return err // permanent
		}
		time.Sleep(time.Duration(100*(i+1)) * time.Millisecond)
	}
	return err
}

// runProbe starts a child, as cred (nil: as this process), that confines
// itself as a real one does and exits: nil if all of it applied; a
// *startError if it could not be started.
func (iso *Isolator) runProbe(cred *syscall.Credential) error {
	cmd := iso.command(RoleProbe)
	cmd.SysProcAttr.Credential = cred
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return &startError{err}
	}
	timer := time.AfterFunc(probeTimeout, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		if s := strings.TrimSpace(stderr.String()); s != "" {
			return fmt.Errorf("%v: %s", err, s)
		}
		return err
	}
	return nil
}

// defaultUser is the user "hybrid-isolate" if the host has one, else
// nobody:nogroup (65534:65534).
func defaultUser() *User {
	if u, err := user.Lookup("hybrid-isolate"); err == nil {
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 == nil && err2 == nil {
			return &User{UID: uint32(uid), GID: uint32(gid)}
		}
	}
	return &User{UID: 65534, GID: 65534}
}

// command is a child process of role, as every child starts: an empty
// environment but its role and limits, an empty working directory, its own
// process group, the parent-death signal, and the children's user.
func (iso *Isolator) command(role string) *exec.Cmd {
	cmd := exec.Command(iso.cfg.Exe)
	// One P, and the runtime's watch of the cgroup's CPU quota off: a child
	// is one task, and the isolator's parallelism is its children, as many
	// at once as the pool admits. With a second P, every goroutine a job
	// starts (argon2's lanes and slices, timers) woke an idle M to spin
	// looking for work: an argon2id child took 22.9 against 21.5 ms of CPU,
	// a hash-64k child 3.5 against 3.2. A job's own goroutines still run,
	// in turn: argon2id with p=4 costs the same CPU and ~4× its p=1 time.
	cmd.Env = []string{RoleEnv + "=" + role, limitsEnv + "=" + iso.limits,
		"GOMAXPROCS=1", "GODEBUG=containermaxprocs=0,updatemaxprocs=0",
		// No collection until the soft memory limit (set by the child at 90 %
		// of Config.Memory): a child lives for one job, and a fresh heap
		// that grows is cheaper than collecting it (argon2id: 36 → 24 ms).
		"GOGC=off"}
	if v, ok := os.LookupEnv("GORACE"); ok { // only race-built binaries read it
		cmd.Env = append(cmd.Env, "GORACE="+v)
	}
	cmd.Dir = iso.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: iso.cred}
	return cmd
}

// child is one started isolate process.
type child struct {
	cmd    *exec.Cmd
	in     *bufio.Writer
	stdin  *os.File // our end of its stdin
	stdout *os.File // our end of its stdout
	input  *os.File // its input file (inputFD in the child), open read-write here
	out    *bufio.Reader
	stderr *tail.Buffer
	cg     cgroupSlot    // nil without cgroups
	done   chan struct{} // closed once the process is reaped
	served int
	slot   bool // holds a warm slot
}

func (iso *Isolator) start() (*child, error) {
	cmd := iso.command(RoleChild)
	// Its stderr is kept for the log, up to 1 MiB: a child that floods it
	// then blocks, instead of costing the worker's CPU to read.
	c := &child{cmd: cmd, stderr: &tail.Buffer{Head: 512, Max: 4096, Limit: 1 << 20}, done: make(chan struct{})}
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
	input, inputRO, err := newInputFile()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	cmd.ExtraFiles = []*os.File{inputRO} // inputFD
	c.stdin, c.stdout, c.input = inW, outR, input
	c.in, c.out = bufio.NewWriterSize(inW, 4<<10), bufio.NewReaderSize(outR, maxHeaderLine)
	closeAll := func() {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		input.Close()
		inputRO.Close()
	}
	if iso.lim != nil {
		if c.cg, err = iso.lim.Take(); err != nil {
			closeAll()
			return nil, fmt.Errorf("isolate: cgroup: %w", err)
		}
		if fd := c.cg.CloneFD(); fd >= 0 {
			// In its cgroup from its first instruction (cgroup v2).
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
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
	inputRO.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		input.Close()
		if c.cg != nil {
			c.cg.Release()
		}
		return nil, fmt.Errorf("isolate: start child: %w", err)
	}
	iso.started.Add(1)
	// Into the cgroup before any input is sent: the child reads nothing
	// until the first frame arrives.
	if c.cg != nil && c.cg.CloneFD() < 0 {
		if err := c.cg.Add(cmd.Process.Pid); err != nil {
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

// dyingGrace is how long a child whose reply broke off may take to exit by
// itself (killed by its memory limit, its CPU limit or the seccomp filter),
// so that its own end is what classifies the run, before it is killed.
const dyingGrace = 50 * time.Millisecond

// Run runs job on input in a child and returns its output, or one of the
// typed outcomes: ErrTimeout, ErrMemory, ErrCPU, ErrViolation, a *JobError
// or a *CrashError. The child's reply is not trusted: the wall clock covers
// the whole exchange, a reply longer than job.MaxOutput, a malformed one or
// a status outside 400–599 kills the child, and Run never waits on a child
// without a timer. When ctx ends first (the caller's own deadline), the
// child is killed and Run returns ctx.Err(). input is not used after Run
// returns.
func (iso *Isolator) Run(ctx context.Context, job Job, input []byte) ([]byte, error) {
	c, err := iso.take()
	if err != nil {
		return nil, err
	}
	limit := job.MaxOutput
	if limit <= 0 {
		limit = maxRequest
	}
	type result struct {
		h       header
		payload []byte
		err     error
	}
	wrote := make(chan error, 1)
	got := make(chan result, 1)
	if err := c.load(input); err != nil {
		iso.retire(c)
		return nil, err
	}
	go func() {
		wrote <- writeHeader(c.in, header{Job: job.Name, Params: job.Params, Heap: job.Heap, Size: len(input)}, nil)
	}()
	go func() {
		h, payload, err := readFrame(c.out, limit)
		got <- result{h, payload, err}
	}()
	timer := time.NewTimer(iso.cfg.Timeout)
	defer timer.Stop()
	var r result
	var werr error
	gotR, gotW := false, false
	// The writer is done, or unblocked by the child's death, before Run
	// returns: the input is not touched after that.
	waitWrite := func() {
		if !gotW {
			werr, gotW = <-wrote, true
		}
	}
	for !gotR || (!gotW && r.err == nil) {
		select {
		case r = <-got:
			gotR = true
		case werr = <-wrote:
			gotW = true
		case <-timer.C:
			iso.retire(c)
			waitWrite()
			iso.timeout.Add(1)
			return nil, ErrTimeout
		case <-ctx.Done():
			iso.retire(c)
			waitWrite()
			return nil, ctx.Err()
		}
	}
	if r.err != nil {
		// No reply, or a broken one: let a dying child finish dying, so its
		// end names the outcome; a child still alive is lying, and is killed.
		select {
		case <-c.done:
		case <-time.After(dyingGrace):
		}
		killed := iso.kill(c)
		waitWrite()
		out := iso.classify(c, job.Name, killed, r.err)
		iso.retire(c)
		return nil, out
	}
	if werr != nil { // it answered, yet did not take its input: a lie
		iso.retire(c)
		iso.crashed.Add(1)
		iso.log.Error("isolate child answered without reading its input", "job", job.Name, "err", werr.Error())
		return nil, &CrashError{Reason: "answered without reading its input"}
	}
	if r.h.Status != 0 {
		if r.h.Status < 400 || r.h.Status > 599 {
			iso.retire(c)
			iso.crashed.Add(1)
			iso.log.Error("isolate child answered a status out of range", "job", job.Name, "status", r.h.Status)
			return nil, &CrashError{Reason: fmt.Sprintf("status %d out of range", r.h.Status)}
		}
		if st, ok := job.Codes[r.h.Code]; job.Codes != nil && (!ok || st != r.h.Status) {
			iso.retire(c)
			iso.crashed.Add(1)
			code := r.h.Code[:min(len(r.h.Code), 64)]
			iso.log.Error("isolate child answered an unknown error", "job", job.Name, "status", r.h.Status, "code", code)
			return nil, &CrashError{Reason: fmt.Sprintf("unknown error %d %q", r.h.Status, code)}
		}
		c.served++
		iso.recycle(c)
		iso.inputErr.Add(1)
		return nil, &JobError{Status: r.h.Status, Code: r.h.Code, Message: r.h.Message}
	}
	c.served++
	iso.recycle(c)
	iso.ok.Add(1)
	return r.payload, nil
}

// kill kills the child's process group unless it has been reaped, and
// reports whether it was still alive (then its end is ours, not its own).
func (iso *Isolator) kill(c *child) bool {
	select {
	case <-c.done:
		return false
	default:
		iso.signalKill(c)
		c.stdin.Close()
		<-c.done
		return true
	}
}

// signalKill kills a child not yet reaped. Process.Kill goes through a
// pidfd, so it cannot hit a process that took a reaped child's number;
// under the filter the child cannot have made others. Without the filter
// its process group is killed too (the cgroup, where there is one, gets
// the rest when it is released).
func (iso *Isolator) signalKill(c *child) {
	c.cmd.Process.Kill()
	if !iso.seccompOn {
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
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

// classify names why a child ended without a valid reply. killed says the
// isolator killed it, alive, after its reply broke off (a lie).
func (iso *Isolator) classify(c *child, name string, killed bool, readErr error) error {
	st := c.cmd.ProcessState
	ws, _ := st.Sys().(syscall.WaitStatus)
	ru, _ := st.SysUsage().(*syscall.Rusage)
	var cpu time.Duration
	if ru != nil {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	tail := c.stderr.String()
	switch {
	case c.cg != nil && c.cg.OOMKilled(), c.cg == nil && outOfMemory(tail):
		iso.memory.Add(1)
		return ErrMemory
	case !killed && ws.Signaled() && ws.Signal() == syscall.SIGSYS:
		iso.violation.Add(1)
		iso.log.Warn("isolate child killed by its seccomp filter", "job", name, "child_pid", c.cmd.Process.Pid,
			"stderr_tail", tail)
		return ErrViolation
	case !killed && ws.Signaled() && (ws.Signal() == syscall.SIGKILL || ws.Signal() == syscall.SIGXCPU) &&
		cpu >= iso.cfg.CPU-100*time.Millisecond:
		iso.cpu.Add(1)
		return ErrCPU
	}
	iso.crashed.Add(1)
	reason := st.String()
	if ws.Signaled() {
		reason = "signal " + ws.Signal().String()
	}
	if killed {
		reason = "killed after a broken reply: " + readErr.Error()
	}
	iso.log.Error("isolate child crashed", "job", name, "child_pid", c.cmd.Process.Pid,
		"reason", reason, "cpu_ms", cpu.Milliseconds(), "stderr_tail", tail, "read_err", fmt.Sprint(readErr))
	return &CrashError{Reason: reason}
}

// outOfMemory reports whether a child's stderr says RLIMIT_DATA stopped it:
// Go's runtime, or the race detector's in a race-built binary.
func outOfMemory(stderr string) bool {
	return strings.Contains(stderr, "out of memory") || strings.Contains(stderr, "cannot allocate memory") ||
		strings.Contains(stderr, "ThreadSanitizer failed to allocate")
}

// destroy kills the child's whole process group and every task in its
// cgroup, reaps it and gives the cgroup back: nothing it started survives.
func (iso *Isolator) destroy(c *child) {
	select {
	case <-c.done:
		// Reaped: if its group is empty its number may belong to a new child
		// now, so only the cgroup (below) may be used to find stragglers.
	default:
		iso.signalKill(c)
	}
	c.stdin.Close()
	<-c.done
	if c.cg != nil {
		for p := c.cg.Peak(); ; {
			old := iso.peakChild.Load()
			if p <= old || iso.peakChild.CompareAndSwap(old, p) {
				break
			}
		}
		c.cg.Release()
		c.cg = nil
	}
	c.stdout.Close()
	c.input.Close()
}

// newInputFile makes the file a child's inputs travel in: a memfd, and a
// second, read-only descriptor of it (reopened through /proc/self/fd) that
// the child inherits as inputFD. The child can map it and read it, never
// write it, grow it or keep anything in it for the next child: each child
// has its own, closed with it.
func newInputFile() (rw, ro *os.File, err error) {
	fd, err := unix.MemfdCreate("hybrid-isolate-input", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("isolate: input file: %w", err)
	}
	rofd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("isolate: input file: %w", err)
	}
	return os.NewFile(uintptr(fd), "isolate-input"), os.NewFile(uintptr(rofd), "isolate-input-ro"), nil
}

// load writes a task's input into c's input file, over the last one's,
// and cuts the file to its length: a reused child finds no byte of a
// previous task past this one's end (the pages both use are kept).
func (c *child) load(input []byte) error {
	if _, err := c.input.WriteAt(input, 0); err != nil {
		return fmt.Errorf("isolate: input of %d bytes: %w", len(input), err)
	}
	if c.served > 0 {
		if err := c.input.Truncate(int64(len(input))); err != nil {
			return fmt.Errorf("isolate: input file: %w", err)
		}
	}
	return nil
}

// Stats returns the capabilities and outcome counters. It never waits: until
// the start-up probe is done, Probing is true and Limits empty.
func (iso *Isolator) Stats() Stats {
	caps, probing := iso.capabilities()
	return Stats{Limits: caps, Probing: probing, PeakChild: iso.peakChild.Load(), Started: iso.started.Load(), Outcomes: map[string]uint64{
		"ok": iso.ok.Load(), "input_error": iso.inputErr.Load(), "isolate_timeout": iso.timeout.Load(),
		"memory_limit": iso.memory.Load(), "cpu_limit": iso.cpu.Load(), "sandbox_violation": iso.violation.Load(),
		"isolate_crashed": iso.crashed.Load(),
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

// Close ends the warm children, gives back the cgroups and removes the
// working directory.
func (iso *Isolator) Close() error {
	<-iso.probed
	select {
	case <-iso.quit:
		return nil // closed already
	default:
	}
	close(iso.quit)
	iso.wg.Wait()
	for {
		select {
		case c := <-iso.spares:
			iso.destroy(c)
		default:
			if iso.lim != nil {
				iso.lim.Close()
			}
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
	if p := iso.limitsJSON.Load(); p != nil {
		o.B = append(o.B, *p...)
	} else {
		start := len(o.B)
		l := jsonw.Open(o.B)
		l.String("memory", caps.Memory)
		l.String("processes", caps.Processes)
		l.String("network", caps.Network)
		l.String("files", caps.Files)
		l.String("cpu", caps.CPU)
		l.String("wall_clock", caps.WallClock)
		l.String("user", caps.User)
		o.B = l.Close()
		if !probing { // final: kept rendered, as /health asks for it on every call
			rendered := slices.Clone(o.B[start:])
			iso.limitsJSON.Store(&rendered)
		}
	}
	if probing {
		o.Bool("probing", true)
	}
	o.Uint("children_started", iso.started.Load())
	o.Uint("peak_child_bytes", iso.peakChild.Load())
	o.Key("outcomes") // encoding/json writes a map's keys sorted
	oc := jsonw.Open(o.B)
	oc.Uint("cpu_limit", iso.cpu.Load())
	oc.Uint("input_error", iso.inputErr.Load())
	oc.Uint("isolate_crashed", iso.crashed.Load())
	oc.Uint("isolate_timeout", iso.timeout.Load())
	oc.Uint("memory_limit", iso.memory.Load())
	oc.Uint("ok", iso.ok.Load())
	oc.Uint("sandbox_violation", iso.violation.Load())
	o.B = oc.Close()
}
