//go:build linux

package procpool

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/internal/tail"
	"golang.org/x/sys/unix"
)

// Worker states as reported in [Snapshot].
const (
	StateStarting = "starting"
	StateReady    = "ready"
	StateDraining = "draining"
)

// tick is the supervisor's timer resolution for deadlines and restarts.
const tick = 50 * time.Millisecond

// Supervisor is the primary: it owns the listening socket and keeps
// Config.Workers worker processes serving on it. Create it with [New], run it
// with [Supervisor.Run].
type Supervisor struct {
	cfg   Config
	log   *slog.Logger
	sock  *socket
	board *board // nil unless shared mode with more than one worker
	exe   string

	events   chan func() // run on the loop goroutine, which owns all state below
	done     chan struct{}
	kill     chan struct{}
	killOnce sync.Once
	snap     atomic.Pointer[Snapshot]
	forks    atomic.Int64

	slots       []*slot
	procs       map[*proc]struct{}
	crashes     crashWindow
	circuitOpen bool
	circuitWhy  string
	reload      reloadState
	reloads     int64 // rolling reloads started, for the snapshot
	crashCount  int64 // unexpected worker exits, for the snapshot
	restarts    int64 // workers started again after a crash, for the snapshot
	metrics     MetricsSink
	shutting    bool

	upgrade      upgradeState
	upgrades     int64     // upgrades started, for the snapshot
	handover     *handover // a primary started by an upgrade, until it reported ready
	predecessor  int       // the old primary that started this one, until its carry pipe ends (predecessorDraining)
	upgradedFrom int       // the old primary that started this one (UpgradedFrom); set in New only
	lastUpgrade  *UpgradeOutcome
	handedOver   chan struct{} // closed once a new primary took over
	tookOver     chan struct{} // closed once this primary serves (TookOver)
	passOn       []namedListener
	poolSize     int // the task-pool size set at run time; 0: the flags'

	// A primary started by an upgrade: the old primary's totals.
	carried    Counts
	carryIn    *os.File  // the carry pipe, until Run reads it
	carryGot   bool      // the provisional totals came, or none will
	carryAwait time.Time // told "ready", waiting for them until then
}

type slot struct {
	id        int
	cur       *proc // the worker serving (or starting to) for this slot
	next      *proc // its successor, starting, during a reload or recycle
	spawned   int   // workers started for this slot; restarts are spawned-1
	backoff   backoff
	restartAt time.Time // a pending crash restart; zero if none
	removed   bool      // scaled away: its workers drain and none starts
}

type reloadState struct {
	active bool
	queue  []*slot
}

type stopReason int

const (
	stopNone stopReason = iota
	stopDrain
	stopStartTimeout
	stopHung
)

type proc struct {
	slot     *slot
	cmd      *exec.Cmd
	pid      int
	state    string
	started  time.Time
	readyAt  time.Time
	lastBeat time.Time
	beat     Heartbeat
	maxReqs  uint64
	stop     stopReason
	killAt   time.Time // SIGKILL at this time if still alive; zero if none
	reload   bool      // started by a reload: its failure stops the reload
	fatal    string    // the worker's own message before an ExitConfig exit
	stderr   *tail.Buffer
	entry    int      // its accept board entry; -1 for none
	ctrl     net.Conn // the control channel, for messages to the worker
	version  string   // as the worker reported when ready
	build    string
	drainAt  time.Time // when its drain began
	capped   bool      // stopped early by the cap on draining workers
}

// New binds the cluster's address and returns a supervisor ready to Run. A
// bind error is returned here, once, naming the address.
func New(cfg Config, log *slog.Logger) (*Supervisor, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("procpool: invalid config: %w", err)
	}
	if cfg.Args == nil && len(os.Args) > 1 {
		cfg.Args = os.Args[1:]
	}
	if cfg.Binary == "" {
		cfg.Binary = startedFrom()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A primary started by an upgrade adopts the old primary's socket; it
	// never binds.
	inh, err := inherited()
	if err != nil {
		return nil, err
	}
	var sock *socket
	switch {
	case inh != nil:
		sock, err = inh.adopt(cfg.ListenMode)
	case cfg.Listener != nil:
		sock, err = adoptListener(cfg.Listener, cfg.ListenMode)
	default:
		sock, err = bind(cfg.Addr, cfg.ListenMode)
	}
	if err != nil {
		inh.close()
		return nil, err
	}
	s := &Supervisor{
		cfg:        cfg,
		log:        log,
		sock:       sock,
		exe:        "/proc/self/exe",
		events:     make(chan func(), 64),
		done:       make(chan struct{}),
		kill:       make(chan struct{}),
		procs:      make(map[*proc]struct{}),
		crashes:    crashWindow{window: cfg.CrashWindow},
		handedOver: make(chan struct{}),
		tookOver:   make(chan struct{}),
	}
	if inh != nil {
		s.handover = &handover{ready: inh.ready, from: inh.from}
		s.upgradedFrom = inh.from
		if inh.carry != nil { // an old primary that carries nothing tells nothing of its drain either
			s.predecessor = s.handover.from
		}
		s.carryIn = inh.carry
		s.carryGot = inh.carry == nil // an old primary that carries nothing
	} else {
		close(s.tookOver)
	}
	// Sized for MaxWorkers, so that Scale never needs a new board.
	if cfg.ListenMode == ListenShared && cfg.AcceptBalance == BalanceConns && cfg.MaxWorkers > 1 {
		if s.board, err = newBoard(boardEntries(cfg.MaxWorkers)); err != nil {
			sock.Close()
			s.handover.close()
			if s.carryIn != nil {
				s.carryIn.Close()
			}
			return nil, err
		}
	}
	for i := range cfg.Workers {
		s.slots = append(s.slots, &slot{id: i + 1, backoff: backoff{initial: cfg.RestartBackoff, max: cfg.RestartBackoffMax}})
	}
	s.publish()
	return s, nil
}

// Addr returns the address the cluster serves on (with the port chosen, if
// Config.Addr asked for port 0).
func (s *Supervisor) Addr() net.Addr { return s.sock.addr }

// Reload starts a zero-downtime rolling reload: one slot at a time, a new
// worker is started, and once it is ready the old one drains. It also closes
// an open circuit and forgets a pool size set by SetPoolSize (the workers
// read their flags again). It returns once the reload has started, or
// [ErrBusy] if a reload or an upgrade is running: the request is refused,
// not queued, so that a storm of reloads runs only those that complete
// while it lasts, one at a time.
func (s *Supervisor) Reload() error { return s.call(s.onReload) }

// Kill makes a running shutdown stop waiting: every worker gets SIGKILL.
func (s *Supervisor) Kill() { s.killOnce.Do(func() { close(s.kill) }) }

// Snapshot returns the cluster's current state. Safe to call at any time.
func (s *Supervisor) Snapshot() Snapshot { return *s.snap.Load() }

// SetMetricsSink makes the supervisor hand the workers' metrics payloads
// to sink. Call it before Run.
func (s *Supervisor) SetMetricsSink(sink MetricsSink) { s.metrics = sink }

// Forks returns how many worker processes were started in all.
func (s *Supervisor) Forks() int64 { return s.forks.Load() }

// Run starts the workers and supervises them until ctx is done, then drains
// them: each gets SIGTERM and Config.ShutdownTimeout to finish its in-flight
// requests before SIGKILL. An upgrade's new primary that is not ready yet is
// rolled back (its process group gets SIGTERM, SIGKILL after 3 s, at once
// after Kill). Run returns once every worker, and such a new primary, has
// exited: nothing it started holds the sockets any more.
func (s *Supervisor) Run(ctx context.Context) error {
	defer close(s.done)
	defer s.sock.Close()
	defer func() { s.handover.close() }() // never ready: the old primary rolls back
	if s.board != nil {
		defer s.board.Close()
	}
	if os.Getpid() == 1 {
		stop := reapOrphans(s.log)
		defer stop()
	}
	version, build := BuildInfo()
	attrs := []any{"addr", s.sock.addr.String(), "workers", len(s.slots), "worker_gomaxprocs", s.cfg.WorkerProcs,
		"listen_mode", s.cfg.ListenMode, "version", version, "build", build}
	if s.handover != nil {
		attrs = append(attrs, "upgrade_from_pid", s.handover.from)
	}
	s.log.Info("primary starting", attrs...)
	if s.carryIn != nil {
		go s.readCarry(s.carryIn)
		s.carryIn = nil
	}
	for _, sl := range s.slots {
		s.spawn(sl, false)
	}
	s.publish()
	t := time.NewTicker(tick)
	defer t.Stop()
	ctxDone := ctx.Done()
	for {
		select {
		case f := <-s.events:
			f()
		case <-t.C:
			s.onTick(time.Now())
		case <-ctxDone:
			ctxDone = nil
			s.shutdown()
		case <-s.kill:
			s.shutdown()
			s.kill = nil
			for p := range s.procs {
				s.log.Warn("forced shutdown: killing worker", "worker", p.slot.id, "worker_pid", p.pid)
				p.signal(syscall.SIGKILL)
			}
			if u := &s.upgrade; u.active && !u.succeeded {
				s.log.Warn("forced shutdown: killing the new primary's process group", "new_primary_pid", u.cmd.Process.Pid)
				u.killAt = time.Time{}
				signalGroup(u.cmd, syscall.SIGKILL)
			}
		}
		s.publish()
		// A new primary being rolled back is waited for too: it holds the
		// sockets, and once this process is gone nobody would stop it.
		if s.shutting && len(s.procs) == 0 && !(s.upgrade.active && !s.upgrade.succeeded) {
			s.log.Info("primary stopped: all workers exited")
			if u := &s.upgrade; u.active && u.succeeded {
				s.sendCarry(u.carry, true) // every worker's last heartbeat is in
				u.carry.close(true)
			}
			return nil
		}
	}
}

// post runs f on the loop goroutine. After Run returned, f is dropped.
func (s *Supervisor) post(f func()) {
	select {
	case s.events <- f:
	case <-s.done:
	}
}

// call runs f on the loop goroutine and returns its error, once the
// snapshot shows f's effect; [ErrStopped] once Run has returned.
func (s *Supervisor) call(f func() error) error {
	reply := make(chan error, 1)
	s.post(func() {
		err := f()
		s.publish()
		reply <- err
	})
	select {
	case err := <-reply:
		return err
	case <-s.done:
		select {
		case err := <-reply:
			return err
		default:
			return ErrStopped
		}
	}
}

// spawn starts a worker for sl: as its current worker, or as the successor
// that replaces the current one once ready.
func (s *Supervisor) spawn(sl *slot, successor bool) *proc {
	if s.circuitOpen || s.shutting || sl.removed {
		return nil
	}
	p := &proc{slot: sl, state: StateStarting, started: time.Now(), stderr: &tail.Buffer{Head: 512, Max: 4096}, entry: s.freeEntry()}
	if s.cfg.MaxRequests > 0 {
		p.maxReqs = s.cfg.MaxRequests + rand.Uint64N(s.cfg.MaxRequests/10+1)
	}
	if err := s.start(p); err != nil {
		// Exec failing is as fatal as a crash at start: count it, so that it
		// cannot loop.
		s.log.Error("worker start failed", "worker", sl.id, "err", err)
		s.crashed(p, fmt.Sprintf("start failed: %v", err), -1, 0)
		if !successor && !s.circuitOpen {
			sl.restartAt = time.Now().Add(sl.backoff.delay(0, s.cfg.CrashWindow))
		}
		return nil
	}
	s.forks.Add(1)
	if !successor && sl.spawned > 0 {
		s.restarts++
	}
	if successor {
		sl.next = p
	} else {
		sl.cur = p
	}
	sl.spawned++
	s.procs[p] = struct{}{}
	s.log.Info("worker starting", "worker", sl.id, "worker_pid", p.pid, "successor", successor)
	return p
}

// freeEntry returns an accept board entry no live worker holds, cleared, or
// -1 without a board. Should draining workers ever hold them all, the new
// worker serves outside the balance, as with no board.
func (s *Supervisor) freeEntry() int {
	if s.board == nil {
		return -1
	}
	used := make([]bool, s.board.entries())
	for p := range s.procs {
		if p.entry >= 0 {
			used[p.entry] = true
		}
	}
	for i, u := range used {
		if !u {
			s.board.clear(i)
			return i
		}
	}
	return -1
}

// start forks and execs the worker from a goroutine locked to its OS thread
// for the worker's whole life, because the parent-death signal fires when the
// forking thread exits (golang/go#27505).
func (s *Supervisor) start(p *proc) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("control socketpair: %w", err)
	}
	parentEnd := os.NewFile(uintptr(fds[0]), "control")
	childEnd := os.NewFile(uintptr(fds[1]), "control-child")
	ctrl, err := net.FileConn(parentEnd)
	parentEnd.Close()
	if err != nil {
		childEnd.Close()
		return fmt.Errorf("control channel: %w", err)
	}

	cmd := exec.Command(s.exe, s.cfg.Args...)
	cmd.Env = s.workerEnv(p)
	cmd.Stdout = os.Stdout
	cmd.Stderr = io.MultiWriter(os.Stderr, p.stderr)
	cmd.WaitDelay = 2 * time.Second
	var lnFile *os.File
	if s.sock.mode == ListenShared {
		lnFile = s.sock.file
	}
	var boardFile *os.File
	if p.entry >= 0 {
		boardFile = s.board.file
	}
	cmd.ExtraFiles = append([]*os.File{lnFile, childEnd, boardFile}, s.cfg.Shared...) // fd 3, 4, 5, 6…
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true, // terminal signals reach the primary only; it decides
		Pdeathsig: syscall.SIGTERM,
	}
	p.cmd = cmd

	started := make(chan error, 1)
	ctrlDone := make(chan struct{}) // closed at the control channel's EOF
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the worker
		err := startLocked(cmd)
		childEnd.Close()
		started <- err
		if err != nil {
			return
		}
		werr := cmd.Wait()
		forget(cmd.Process.Pid)
		// The worker's last heartbeats reach the loop before its exit, so
		// that its metrics are final when the sink hears of the exit. The
		// channel ends with the process (the worker's end is close-on-exec
		// for its own children); the bound is for a descendant that
		// somehow holds it.
		select {
		case <-ctrlDone:
		case <-time.After(time.Second):
		}
		s.post(func() { s.onExit(p, werr) })
	}()
	if err := <-started; err != nil {
		ctrl.Close()
		return err
	}
	p.pid, p.ctrl = cmd.Process.Pid, ctrl
	go func() {
		defer close(ctrlDone)
		s.readControl(p, ctrl)
	}()
	return nil
}

func (s *Supervisor) workerEnv(p *proc) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == RoleEnv || k == workerIDEnv || k == listenEnv || k == boardEnv || k == poolSizeEnv ||
			k == upgradeEnv || k == sharedEnv || k == "GOMAXPROCS"
	})
	env = append(env,
		RoleEnv+"="+RoleWorker,
		workerIDEnv+"="+strconv.Itoa(p.slot.id),
		s.sock.childEnv(),
		"GOMAXPROCS="+strconv.Itoa(s.cfg.WorkerProcs),
	)
	if p.maxReqs > 0 {
		env = append(env, maxRequestEnv+"="+strconv.FormatUint(p.maxReqs, 10))
	}
	if p.entry >= 0 {
		env = append(env, fmt.Sprintf("%s=%d/%d", boardEnv, p.entry, s.board.entries()))
	}
	if s.poolSize > 0 {
		env = append(env, poolSizeEnv+"="+strconv.Itoa(s.poolSize))
	}
	if len(s.cfg.Shared) > 0 {
		env = append(env, sharedEnv+"="+sharedSpec(s.cfg.Shared, sharedFD))
	}
	return append(env, s.cfg.Env...)
}

// readControl turns the worker's control messages into loop events until EOF.
func (s *Supervisor) readControl(p *proc, ctrl net.Conn) {
	defer ctrl.Close()
	sc := bufio.NewScanner(ctrl)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		var m message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			s.log.Warn("bad control message", "worker", p.slot.id, "worker_pid", p.pid, "err", err)
			continue
		}
		switch m.Type {
		case msgReady:
			s.post(func() { p.version, p.build = m.Version, m.Build; s.onReady(p) })
		case msgHeartbeat:
			if m.Beat != nil {
				hb := *m.Beat
				s.post(func() { s.onBeat(p, hb) })
			}
		case msgFatal:
			s.post(func() { p.fatal = m.Message })
		}
	}
}

func (s *Supervisor) onReady(p *proc) {
	if p.state != StateStarting || p.stop != stopNone {
		return
	}
	now := time.Now()
	p.state, p.readyAt, p.lastBeat = StateReady, now, now
	s.log.Info("worker ready", "worker", p.slot.id, "worker_pid", p.pid,
		"start_to_ready_ms", float64(now.Sub(p.started).Microseconds())/1000)
	sl := p.slot
	if sl.next == p {
		old := sl.cur
		sl.cur, sl.next = p, nil
		if old != nil {
			s.drain(old, "replaced")
		}
	}
	if p.reload {
		s.advanceReload()
	}
	s.handoverIfReady()
}

func (s *Supervisor) onBeat(p *proc, hb Heartbeat) {
	p.lastBeat, p.beat = time.Now(), hb
	if s.metrics != nil && hb.Metrics != nil {
		s.metrics.Beat(p.slot.id, p.pid, hb.Metrics)
	}
	sl := p.slot
	if p != sl.cur || p.state != StateReady || p.stop != stopNone || sl.next != nil || s.reload.active ||
		time.Since(p.readyAt) < s.minRecycleUptime() {
		return
	}
	var why string
	switch {
	case s.cfg.MaxRSS > 0 && hb.RSS > s.cfg.MaxRSS:
		why = fmt.Sprintf("rss %d bytes over max-rss %d", hb.RSS, s.cfg.MaxRSS)
	case p.maxReqs > 0 && hb.Requests >= p.maxReqs:
		why = fmt.Sprintf("served %d requests, limit %d", hb.Requests, p.maxReqs)
	default:
		return
	}
	s.log.Info("recycling worker", "worker", sl.id, "worker_pid", p.pid, "reason", why)
	s.spawn(sl, true)
}

func (s *Supervisor) onExit(p *proc, werr error) {
	delete(s.procs, p)
	if s.metrics != nil {
		s.metrics.Exit(p.slot.id, p.pid)
	}
	if p.entry >= 0 {
		s.board.clear(p.entry) // a killed worker cannot clear its own
	}
	sl := p.slot
	wasSuccessor := sl.next == p
	if sl.cur == p {
		sl.cur = nil
	}
	if wasSuccessor {
		sl.next = nil
	}
	st := p.cmd.ProcessState
	status := "unknown"
	code := -1
	if st != nil {
		status, code = st.String(), st.ExitCode()
	} else if werr != nil {
		status = werr.Error()
	}
	if p.stop == stopDrain {
		lvl := slog.LevelInfo
		if code != 0 {
			lvl = slog.LevelWarn
		}
		s.log.Log(context.Background(), lvl, "worker exited", "worker", sl.id, "worker_pid", p.pid, "status", status)
		return
	}
	if s.shutting {
		s.log.Warn("worker exited during shutdown", "worker", sl.id, "worker_pid", p.pid, "status", status)
		return
	}
	var why string
	switch p.stop {
	case stopStartTimeout:
		why = fmt.Sprintf("not ready within start timeout %v (%s)", s.cfg.StartTimeout, status)
	case stopHung:
		why = fmt.Sprintf("hung: no heartbeat for %v (%s)", s.cfg.HeartbeatTimeout, status)
	default:
		why = status
		if p.state == StateStarting {
			why = "died before ready: " + status
		}
	}
	var uptime time.Duration
	if !p.readyAt.IsZero() {
		uptime = time.Since(p.readyAt)
	}
	s.crashed(p, why, code, uptime)
	if p.reload || wasSuccessor {
		s.abortReload(p, why)
	}
	if !wasSuccessor && sl.next == nil && !s.circuitOpen {
		d := sl.backoff.delay(uptime, s.cfg.CrashWindow)
		sl.restartAt = time.Now().Add(d)
		s.log.Info("worker restart scheduled", "worker", sl.id, "backoff", d.String())
	}
}

// minRecycleUptime is the youngest a worker may be recycled: a --max-rss
// below a fresh worker's RSS then costs one fork per worker every ten
// heartbeats, not a fork loop.
func (s *Supervisor) minRecycleUptime() time.Duration { return 10 * s.cfg.HeartbeatInterval }

// crashed records an unexpected exit and opens the circuit when the crash
// loop is established, or at once for a configuration error.
func (s *Supervisor) crashed(p *proc, why string, code int, uptime time.Duration) {
	n := s.crashes.add(time.Now())
	s.crashCount++
	tail := p.stderr.String()
	s.handoverFailed(fmt.Sprintf("worker %d (pid %d): %s", p.slot.id, p.pid, why))
	attrs := []any{"worker", p.slot.id, "worker_pid", p.pid, "status", why, "crashes_in_window", n, "uptime", uptime.Round(time.Millisecond).String()}
	switch {
	case code == ExitConfig:
		msg := p.fatal
		if msg == "" {
			msg = strings.TrimSpace(tail)
		}
		s.openCircuit(fmt.Sprintf("worker %d configuration error: %s", p.slot.id, msg), append(attrs, "stderr_tail", tail))
	case n > s.cfg.MaxCrashes:
		s.openCircuit(fmt.Sprintf("%d crashes within %v (max %d); last: worker %d %s",
			n, s.cfg.CrashWindow, s.cfg.MaxCrashes, p.slot.id, why), append(attrs, "stderr_tail", tail))
	default:
		s.log.Warn("worker crashed", append(attrs, "stderr_tail", tail)...)
	}
}

func (s *Supervisor) openCircuit(why string, attrs []any) {
	if !s.circuitOpen {
		s.circuitOpen, s.circuitWhy = true, why
		for _, sl := range s.slots {
			sl.restartAt = time.Time{}
		}
		// No worker can start: a reload under way could never end, and
		// would refuse the next one, which is what closes the circuit.
		s.reload = reloadState{}
	}
	s.log.Error("circuit open: no more worker starts until a reload (SIGHUP or POST /reload)",
		append(attrs, "reason", why)...)
}

func (s *Supervisor) closeCircuit() {
	s.circuitOpen, s.circuitWhy = false, ""
	s.crashes.reset()
	for _, sl := range s.slots {
		sl.backoff.reset()
	}
	s.log.Info("circuit closed by reload")
}

func (s *Supervisor) onReload() error {
	switch {
	case s.shutting:
		return ErrStopped
	case s.reload.active:
		return fmt.Errorf("reload refused: a reload is running: %w", ErrBusy)
	case s.upgrade.active || s.handover != nil:
		return fmt.Errorf("reload refused: an upgrade is running: %w", ErrBusy)
	}
	if s.circuitOpen {
		s.closeCircuit()
	}
	if s.poolSize != 0 {
		s.log.Info("reload: the pool size set at run time gives way to the flags'", "pool_size", s.poolSize)
		s.poolSize = 0
	}
	s.log.Info("rolling reload started", "workers", len(s.slots))
	s.reloads++
	s.reload = reloadState{active: true, queue: slices.Clone(s.slots)}
	s.advanceReload()
	return nil
}

// advanceReload replaces the next slot in the queue, or ends the reload.
func (s *Supervisor) advanceReload() {
	for s.reload.active {
		if len(s.reload.queue) == 0 {
			s.reload = reloadState{}
			s.log.Info("rolling reload complete")
			return
		}
		sl := s.reload.queue[0]
		s.reload.queue = s.reload.queue[1:]
		if sl.removed {
			continue
		}
		sl.restartAt = time.Time{}
		if sl.next != nil { // a recycle is under way: let it count as this slot's reload
			sl.next.reload = true
			return
		}
		if p := s.spawn(sl, sl.cur != nil); p != nil {
			p.reload = true
			return
		}
		if !s.reload.active || s.circuitOpen {
			return
		}
	}
}

func (s *Supervisor) abortReload(p *proc, why string) {
	if !s.reload.active {
		return
	}
	s.reload = reloadState{}
	s.log.Error("rolling reload stopped: a new worker failed to become ready; the old workers keep serving",
		"worker", p.slot.id, "worker_pid", p.pid, "reason", why)
}

// drain asks p to stop accepting, finish its in-flight requests and exit.
func (s *Supervisor) drain(p *proc, why string) {
	if p.stop != stopNone {
		return
	}
	p.stop, p.state = stopDrain, StateDraining
	p.drainAt = time.Now()
	p.killAt = p.drainAt.Add(s.cfg.ShutdownTimeout)
	s.log.Info("draining worker", "worker", p.slot.id, "worker_pid", p.pid, "reason", why)
	p.signal(syscall.SIGTERM)
	s.capDraining()
}

func (s *Supervisor) shutdown() {
	if !s.shutting {
		s.rollback("the old primary is shutting down")
		s.log.Info("graceful shutdown: draining all workers", "timeout", s.cfg.ShutdownTimeout.String())
		// Let go of the socket now: it closes when the last draining worker
		// closes its copy, and new connections are refused from then on.
		// Each worker takes what the kernel queued before it closes its
		// copy (server's listener.stop), so that the last close finds next
		// to nothing queued to reset.
		s.sock.Close()
	}
	s.shutting = true
	s.reload = reloadState{}
	for p := range s.procs {
		s.drain(p, "shutdown")
	}
}

func (s *Supervisor) onTick(now time.Time) {
	for p := range s.procs {
		switch {
		case p.stop == stopNone && p.state == StateStarting && now.Sub(p.started) > s.cfg.StartTimeout:
			s.log.Warn("worker not ready within start timeout: killing it", "worker", p.slot.id, "worker_pid", p.pid,
				"start_timeout", s.cfg.StartTimeout.String())
			p.stop = stopStartTimeout
			p.signal(syscall.SIGKILL)
		case p.stop == stopNone && p.state == StateReady && now.Sub(p.lastBeat) > s.cfg.HeartbeatTimeout:
			s.log.Error("worker hung: no heartbeat; sending SIGQUIT for a goroutine dump, then SIGKILL",
				"worker", p.slot.id, "worker_pid", p.pid, "silent_for", now.Sub(p.lastBeat).Round(time.Millisecond).String())
			p.stop = stopHung
			p.killAt = now.Add(s.cfg.QuitGrace)
			p.signal(syscall.SIGQUIT)
		case !p.killAt.IsZero() && now.After(p.killAt):
			s.log.Warn("worker did not exit in time: SIGKILL", "worker", p.slot.id, "worker_pid", p.pid)
			p.killAt = time.Time{}
			p.signal(syscall.SIGKILL)
		}
	}
	s.upgradeTick(now)
	s.carryTick(now)
	for _, sl := range s.slots {
		if !sl.restartAt.IsZero() && !now.Before(sl.restartAt) {
			sl.restartAt = time.Time{}
			if sl.cur == nil && sl.next == nil {
				s.spawn(sl, false)
			}
		}
	}
}

// signal sends sig to the worker. An error means the worker has exited
// already, and its exit event is on its way to the loop.
func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }
