//go:build linux

package procpool

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A binary upgrade hands the cluster from this primary (the old one) to a
// new primary process started from Config.Binary, without closing the
// listening socket. See doc.go for the sequence and its invariants.

// Upgrade results in [UpgradeOutcome].
const (
	UpgradeSucceeded  = "succeeded"
	UpgradeRolledBack = "rolled back"
	UpgradeRefused    = "refused"
)

// upgradeKillGrace is how long a new primary being rolled back has to stop
// its workers after SIGTERM, before SIGKILL to its process group (its
// workers, each in a group of its own, then follow through their control
// channel's EOF: at once while starting, within OrphanGrace once serving).
// It is also what a shutdown of this primary waits at most, besides its own
// drain, for a new primary still starting.
const upgradeKillGrace = 3 * time.Second

// UpgradeOutcome is the last upgrade's result, as /cluster shows it: in the
// old primary for a rollback or a refusal, in the new one for a success.
type UpgradeOutcome struct {
	At     time.Time `json:"at"`
	Result string    `json:"result"` // UpgradeSucceeded, UpgradeRolledBack or UpgradeRefused
	Reason string    `json:"reason,omitempty"`
	Binary string    `json:"binary,omitempty"`
	OldPID int       `json:"old_primary_pid,omitempty"`
	NewPID int       `json:"new_primary_pid,omitempty"`
}

// upgradeState is the old primary's side of an upgrade under way.
type upgradeState struct {
	active    bool
	cmd       *exec.Cmd
	started   time.Time
	deadline  time.Time // ready by then, or rolled back
	decided   bool      // the outcome is known
	succeeded bool
	why       string    // a rollback's reason
	killAt    time.Time // SIGKILL to a new primary being rolled back
	waiters   []chan error
	carry     *carrier // this primary's totals, to the new one
}

// handover is the new primary's side: the pipe to tell the old one "ready"
// or "fail <why>", once.
type handover struct {
	ready *os.File
	from  int // the old primary's pid
}

func (h *handover) send(line string) error {
	_, err := h.ready.WriteString(line + "\n")
	return err
}

func (h *handover) close() {
	if h != nil {
		h.ready.Close()
	}
}

type namedListener struct {
	name string
	ln   net.Listener
}

// PassOn names a listener of the caller's (the admin endpoint's) that an
// upgrade hands to the new primary, which gets it from [Inherited]. Call it
// before Run.
func (s *Supervisor) PassOn(name string, ln net.Listener) {
	s.passOn = append(s.passOn, namedListener{name, ln})
}

// TookOver is closed once this primary serves the cluster: at once for a
// primary not started by an upgrade, and in one started by an upgrade once
// it has told the old primary "ready" (or found it gone). Until then the
// old primary serves the listeners given to PassOn, and the caller should
// not accept on their inherited copies: a request the new primary took
// before the hand-over would be answered by a primary that may yet be
// rolled back, and any change it made lost with it.
func (s *Supervisor) TookOver() <-chan struct{} { return s.tookOver }

// HandedOver is closed when an upgrade's new primary has taken over: this
// primary is draining its workers and will return from Run. The caller
// should stop its own listeners' accepting then (the new primary serves on
// their copies).
func (s *Supervisor) HandedOver() <-chan struct{} { return s.handedOver }

// UpgradedFrom is the pid of the old primary that started this one by an
// upgrade, as that primary said it (not this process's parent, which a
// --binary wrapper may be); 0 for a primary no upgrade started. It does
// not change.
func (s *Supervisor) UpgradedFrom() int { return s.upgradedFrom }

// Upgrade replaces this primary with a new one, executed from
// Config.Binary, that inherits the listening socket and the listeners given
// to PassOn. It returns nil once the new primary and all its workers are
// ready and this primary's workers drain (Run then returns when they have
// exited), or an error wrapping [ErrRolledBack] with the reason once a new
// primary that failed has been stopped: this primary keeps serving. It
// returns [ErrBusy] while a reload or another upgrade runs, or while the
// old primary that started this one still drains its workers, and
// [ErrUnsupported] as PID 1. ctx bounds the wait only: the upgrade goes on.
func (s *Supervisor) Upgrade(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.events <- func() { s.onUpgrade(reply); s.publish() }:
	case <-s.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		select {
		case err := <-reply:
			return err
		default:
			return ErrStopped
		}
	}
}

func (s *Supervisor) onUpgrade(reply chan error) {
	switch {
	case s.shutting:
		reply <- ErrStopped
		return
	case s.upgrade.active || s.handover != nil:
		reply <- fmt.Errorf("upgrade refused: an upgrade is running: %w", ErrBusy)
		return
	case s.reload.active:
		reply <- fmt.Errorf("upgrade refused: a reload is running: %w", ErrBusy)
		return
	case s.predecessorDraining():
		// A third primary would let a storm of upgrades keep any number of
		// old primaries draining, each with its workers, for up to their
		// shutdown timeout.
		reply <- fmt.Errorf("upgrade refused: the previous primary (pid %d) still drains its workers; "+
			"ask again once it has exited, within its shutdown timeout: %w", s.predecessor, ErrBusy)
		return
	case os.Getpid() == 1:
		why := "the primary is PID 1 (a container), which cannot hand over and exit: " +
			"roll out a new image with the orchestrator's rolling update instead"
		s.lastUpgrade = &UpgradeOutcome{At: time.Now().UTC(), Result: UpgradeRefused, Reason: why, Binary: s.cfg.Binary}
		s.log.Error("upgrade refused", "reason", why)
		reply <- fmt.Errorf("upgrade refused: %s: %w", why, ErrUnsupported)
		return
	}
	cmd, report, carry, err := s.startPrimary()
	if err != nil {
		// ErrRolledBack names the package already.
		why := strings.TrimPrefix(err.Error(), "procpool: ")
		s.lastUpgrade = &UpgradeOutcome{At: time.Now().UTC(), Result: UpgradeRolledBack, Reason: why, Binary: s.cfg.Binary}
		s.log.Error("upgrade rolled back: the new primary did not start; this one keeps serving", "binary", s.cfg.Binary, "err", why)
		reply <- fmt.Errorf("%w: %s", ErrRolledBack, why)
		return
	}
	now := time.Now()
	s.upgrade = upgradeState{active: true, cmd: cmd, started: now, deadline: now.Add(s.cfg.StartTimeout), waiters: []chan error{reply},
		carry: newCarrier(carry)}
	s.upgrades++
	s.log.Info("upgrade: new primary starting", "new_primary_pid", cmd.Process.Pid, "binary", s.cfg.Binary,
		"start_timeout", s.cfg.StartTimeout.String())
	go func() {
		line, _ := bufio.NewReader(report).ReadString('\n')
		report.Close()
		s.post(func() { s.onUpgradeReport(cmd, strings.TrimSpace(line)) })
	}()
	go func() {
		werr := cmd.Wait()
		s.post(func() { s.onUpgradeExit(cmd, werr) })
	}()
}

// predecessorDraining reports whether the old primary that started this
// one still drains its workers: its carry pipe has not ended. Only the old
// primary holds the pipe's write end, and it closes it once its last worker
// has exited; the kernel closes it if the old primary dies.
func (s *Supervisor) predecessorDraining() bool {
	return s.predecessor != 0
}

// startPrimary starts the new primary with the sockets on fd 3 (the
// cluster's), 4 (the pipe it reports on), 5 (the pipe this primary's
// totals go on: carry.go) and 6… (PassOn's), and returns the read end of
// the first pipe and the write end of the second.
func (s *Supervisor) startPrimary() (_ *exec.Cmd, report, carry *os.File, err error) {
	r, w, err := os.Pipe() // close-on-exec; ExtraFiles clears it on w in the child
	if err != nil {
		return nil, nil, nil, fmt.Errorf("upgrade pipe: %w", err)
	}
	defer w.Close()
	cr, cw, err := os.Pipe()
	if err != nil {
		r.Close()
		return nil, nil, nil, fmt.Errorf("upgrade pipe: %w", err)
	}
	defer cr.Close()
	defer func() {
		if err != nil {
			r.Close()
			cw.Close()
		}
	}()
	files := []*os.File{s.sock.file, w, cr}
	// from: this primary's pid, which the new one cannot take from
	// Getppid (a --binary wrapper that runs hybrid as its child is its
	// parent then).
	spec := fmt.Sprintf("mode=%s,listener=3,ready=4,carry=5,from=%d", s.cfg.ListenMode, os.Getpid())
	for _, nl := range s.passOn {
		sc, ok := nl.ln.(syscall.Conn)
		if !ok {
			return nil, nil, nil, fmt.Errorf("listener %q (%T) has no descriptor", nl.name, nl.ln)
		}
		f, err := dupListener(sc)
		if err != nil {
			return nil, nil, nil, err
		}
		defer f.Close()
		spec += fmt.Sprintf(",%s=%d", nl.name, 3+len(files))
		files = append(files, f)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, upgradeEnv+"=") || strings.HasPrefix(kv, sharedEnv+"=")
	})
	env = append(env, upgradeEnv+"="+spec)
	if len(s.cfg.Shared) > 0 {
		env = append(env, sharedEnv+"="+sharedSpec(s.cfg.Shared, 3+len(files)))
		files = append(files, s.cfg.Shared...)
	}
	cmd := exec.Command(s.cfg.Binary, s.cfg.Args...)
	cmd.Env = env
	// The new primary writes where this one does; *os.File values are
	// handed over as they are, so nothing here copies after this exits.
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	// Its own process group, as the workers: a terminal's signals reach
	// one primary, and a rollback stops the whole group (signalGroup): a
	// wrapper script's children too, which hold the sockets as well. No
	// parent-death signal: it must outlive this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, fmt.Errorf("start %s: %w", s.cfg.Binary, err)
	}
	return cmd, r, cw, nil
}

// onUpgradeReport takes the new primary's one line: "ready", or "fail
// <why>". EOF without a line waits for the exit (or the deadline).
func (s *Supervisor) onUpgradeReport(cmd *exec.Cmd, line string) {
	u := &s.upgrade
	if !u.active || u.cmd != cmd || u.decided {
		return
	}
	switch {
	case line == "ready":
		u.decided, u.succeeded = true, true
		pid := cmd.Process.Pid
		s.lastUpgrade = &UpgradeOutcome{At: time.Now().UTC(), Result: UpgradeSucceeded, Binary: s.cfg.Binary,
			OldPID: os.Getpid(), NewPID: pid}
		s.log.Info("upgrade: the new primary and its workers are ready; draining this primary's workers",
			"new_primary_pid", pid, "took_ms", float64(time.Since(u.started).Microseconds())/1000)
		s.sendCarry(u.carry, false) // provisional: the workers drain and serve on
		s.publish()                 // /cluster shows the outcome before Upgrade returns it
		for _, w := range u.waiters {
			w <- nil
		}
		u.waiters = nil
		close(s.handedOver)
		s.shutdown()
	case strings.HasPrefix(line, "fail "):
		s.rollback(strings.TrimPrefix(line, "fail "))
	}
}

// rollback stops the new primary of an undecided upgrade: SIGTERM to its
// process group (it drains what its workers took), SIGKILL to the group
// after upgradeKillGrace.
func (s *Supervisor) rollback(why string) {
	u := &s.upgrade
	if !u.active || u.decided {
		return
	}
	u.decided, u.why = true, why
	u.killAt = time.Now().Add(upgradeKillGrace)
	s.log.Error("upgrade rolled back: stopping the new primary; this one keeps serving",
		"new_primary_pid", u.cmd.Process.Pid, "reason", why)
	signalGroup(u.cmd, syscall.SIGTERM)
}

// signalGroup sends sig to the new primary's process group, which it leads
// (Setpgid): whatever it started in it, a wrapper script's exec'd binary
// or its children, holds the inherited sockets too, and signalling the
// primary's pid alone would leave them running. Its workers have groups of
// their own and follow their primary through the control channel.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) {
	// The group outlives its leader while a member lives, and its id is
	// not reused meanwhile; ESRCH: nothing is left of it.
	if err := unix.Kill(-cmd.Process.Pid, sig); err != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// onUpgradeExit ends a failed upgrade once its new primary has exited, so
// that no second one can overlap it.
func (s *Supervisor) onUpgradeExit(cmd *exec.Cmd, werr error) {
	u := &s.upgrade
	if !u.active || u.cmd != cmd {
		return
	}
	if u.succeeded {
		if !s.shutting || len(s.procs) > 0 {
			s.log.Error("the new primary exited after taking over", "new_primary_pid", cmd.Process.Pid, "status", exitStatus(cmd, werr))
		}
		return
	}
	if !u.decided {
		u.why = "the new primary exited before it was ready: " + exitStatus(cmd, werr)
		s.log.Error("upgrade rolled back: the new primary exited; this one keeps serving",
			"new_primary_pid", cmd.Process.Pid, "reason", u.why)
	}
	// What the new primary left in its group (a wrapper script's
	// children) would hold the sockets after this primary is gone.
	_ = unix.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	s.lastUpgrade = &UpgradeOutcome{At: time.Now().UTC(), Result: UpgradeRolledBack, Reason: u.why, Binary: s.cfg.Binary,
		OldPID: os.Getpid(), NewPID: cmd.Process.Pid}
	err := fmt.Errorf("%w: %s", ErrRolledBack, u.why)
	u.carry.close(false)
	waiters := u.waiters
	s.upgrade = upgradeState{}
	s.publish() // /cluster shows the rollback before Upgrade returns it
	for _, w := range waiters {
		w <- err
	}
}

func exitStatus(cmd *exec.Cmd, werr error) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	if werr != nil {
		return werr.Error()
	}
	return "unknown"
}

// upgradeTick enforces the upgrade's deadlines.
func (s *Supervisor) upgradeTick(now time.Time) {
	u := &s.upgrade
	if !u.active {
		return
	}
	if !u.decided && now.After(u.deadline) {
		s.rollback(fmt.Sprintf("the new primary or one of its workers was not ready within the start timeout %v", s.cfg.StartTimeout))
	}
	if u.decided && !u.succeeded && !u.killAt.IsZero() && now.After(u.killAt) {
		s.log.Warn("upgrade: the new primary did not stop in time: SIGKILL to its process group", "new_primary_pid", u.cmd.Process.Pid)
		u.killAt = time.Time{}
		signalGroup(u.cmd, syscall.SIGKILL)
	}
}

// handoverIfReady, in a primary started by an upgrade, tells the old
// primary to drain once every slot's worker is ready.
func (s *Supervisor) handoverIfReady() {
	if s.handover == nil || s.shutting || len(s.slots) == 0 {
		return
	}
	for _, sl := range s.slots {
		if sl.cur == nil || sl.cur.state != StateReady {
			return
		}
	}
	h := s.handover
	s.handover = nil
	if err := h.send("ready"); err != nil {
		// The old primary is gone: this one serves on, as it would have.
		s.log.Warn("upgrade: cannot tell the old primary; it is gone, so this one serves", "err", err.Error())
	}
	h.close()
	s.awaitCarry() // TookOver closes once the old primary's totals are in
	s.lastUpgrade = &UpgradeOutcome{At: time.Now().UTC(), Result: UpgradeSucceeded, Binary: s.cfg.Binary,
		OldPID: h.from, NewPID: os.Getpid()}
	s.log.Info("upgrade: all workers ready; the old primary drains its own", "old_primary_pid", h.from)
}

// handoverFailed, in a primary started by an upgrade, reports a worker that
// failed before the hand-over: the old primary then stops this one.
func (s *Supervisor) handoverFailed(why string) {
	if s.handover == nil {
		return
	}
	h := s.handover
	s.handover = nil
	_ = h.send("fail " + why)
	h.close()
	s.log.Error("upgrade: a worker failed before the hand-over; the old primary keeps serving", "reason", why)
}

// startedFrom is the path this process was started from, absolute, with
// symlinks kept (see Config.Binary).
func startedFrom() string {
	arg0 := os.Args[0]
	if !strings.Contains(arg0, "/") {
		if p, err := exec.LookPath(arg0); err == nil {
			arg0 = p
		}
	}
	if abs, err := filepath.Abs(arg0); err == nil {
		return abs
	}
	return arg0
}

// inheritance is what a primary started by an upgrade got from the old one.
type inheritance struct {
	mode     string
	from     int // the old primary's pid
	listener int
	ready    *os.File
	carry    *os.File // nil from an old primary that carries nothing
}

// inherited parses upgradeEnv; nil when this process is no upgrade's.
func inherited() (*inheritance, error) {
	spec, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return nil, nil
	}
	kv := parseSpec(spec)
	lfd, err1 := strconv.Atoi(kv["listener"])
	rfd, err2 := strconv.Atoi(kv["ready"])
	if err1 != nil || err2 != nil || kv["mode"] == "" {
		return nil, fmt.Errorf("procpool: bad %s %q", upgradeEnv, spec)
	}
	in := &inheritance{mode: kv["mode"], listener: lfd, ready: os.NewFile(uintptr(rfd), "upgrade-ready")}
	if v, ok := kv["from"]; ok {
		if in.from, err1 = strconv.Atoi(v); err1 != nil || in.from <= 0 {
			in.ready.Close()
			return nil, fmt.Errorf("procpool: bad %s %q", upgradeEnv, spec)
		}
	} else {
		in.from = os.Getppid() // an old primary of a version that does not say
	}
	if v, ok := kv["carry"]; ok {
		cfd, err := strconv.Atoi(v)
		if err != nil || cfd < 3 {
			in.ready.Close()
			return nil, fmt.Errorf("procpool: bad %s %q", upgradeEnv, spec)
		}
		in.carry = os.NewFile(uintptr(cfd), "upgrade-carry")
	}
	return in, nil
}

func parseSpec(spec string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	return kv
}

func (in *inheritance) close() {
	if in != nil {
		in.ready.Close()
		if in.carry != nil {
			in.carry.Close()
		}
	}
}

// adopt makes the inherited descriptor this primary's socket.
func (in *inheritance) adopt(mode string) (*socket, error) {
	if in.mode != mode {
		unix.Close(in.listener)
		return nil, fmt.Errorf("procpool: upgrade: the old primary's listen mode is %q and this one's %q: "+
			"an upgrade keeps the socket; restart to change the listen mode", in.mode, mode)
	}
	if mode == ListenReusePort {
		addr, err := boundAddr(in.listener)
		if err != nil {
			unix.Close(in.listener)
			return nil, fmt.Errorf("procpool: upgrade: inherited socket on fd %d: %w", in.listener, err)
		}
		return &socket{file: os.NewFile(uintptr(in.listener), "reservation"), addr: addr, mode: mode}, nil
	}
	f := os.NewFile(uintptr(in.listener), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("procpool: upgrade: inherited listener on fd %d: %w", in.listener, err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("procpool: upgrade: inherited fd %d is a %T, not a TCP listener", in.listener, ln)
	}
	dup, err := dupListener(tl)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &socket{file: dup, ln: ln, addr: tl.Addr().(*net.TCPAddr), mode: mode}, nil
}

// Inherited returns the listener the old primary handed over under name
// (see PassOn), or nil if this process is no upgrade's or got none by that
// name. Call it once per name.
func Inherited(name string) (net.Listener, error) {
	spec, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return nil, nil
	}
	v, ok := parseSpec(spec)[name]
	if !ok {
		return nil, nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("procpool: bad %s %q", upgradeEnv, spec)
	}
	f := os.NewFile(uintptr(fd), name)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("procpool: inherited %s listener on fd %d: %w", name, fd, err)
	}
	return ln, nil
}
