package procpool

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"
)

// Listen modes.
const (
	// ListenShared: the primary owns one listening socket and every worker
	// inherits a duplicate of it. A worker's exit loses no queued connection.
	ListenShared = "shared"
	// ListenReusePort: every worker binds its own SO_REUSEPORT socket. The
	// kernel balances connections evenly, but connections queued on a
	// closing worker's socket are reset.
	ListenReusePort = "reuseport"
)

// Accept balance modes for a shared socket (see the accept board in
// board.go).
const (
	// BalanceConns: a worker holding more open connections than another
	// steps back for up to 2 ms before it accepts, so that connections
	// spread evenly.
	BalanceConns = "conns"
	// BalanceOff: whichever worker the kernel wakes first accepts.
	BalanceOff = "off"
)

// Config is the supervisor's configuration. Zero fields take the defaults of
// [DefaultConfig] (a zero duration or MaxCrashes is the default, never
// "off" or "at once"; only MaxRSS and MaxRequests are off at 0); see
// docs/operations.md for the matching flags. hybrid serve refuses a 0 the
// user wrote for any of them (cmd/hybrid's positiveFlags), since it would
// silently stand for the default.
type Config struct {
	// Addr is the address the cluster serves on, as for net.Listen ("tcp").
	Addr string
	// ListenMode is ListenShared (default) or ListenReusePort.
	ListenMode string
	// AcceptBalance is BalanceConns (default) or BalanceOff. Only a shared
	// socket with more than one worker uses it.
	AcceptBalance string
	// Workers is the number of worker processes. Default: runtime.GOMAXPROCS(0),
	// which honours the container's CPU limit.
	Workers int
	// MaxWorkers is the most workers [Supervisor.Scale] may set. Default:
	// 8 × the CPUs, at least Workers, at most 1024. The accept board is
	// sized for it at start, so that growth needs no new board.
	MaxWorkers int
	// WorkerProcs is the GOMAXPROCS of each worker. Default: the primary's
	// GOMAXPROCS divided by Workers, at least 1, so that N workers never
	// oversubscribe the cores they are given.
	WorkerProcs int
	// Args are the arguments a worker is started with (os.Args[1:] by default,
	// so that a worker reads the same flags as its primary).
	Args []string
	// Env is added to every worker's environment, after os.Environ().
	Env []string
	// Shared are descriptors every worker gets (state shared by the box's
	// processes, such as a memfd the caller maps) and an upgrade hands to
	// the new primary, opaque to procpool: a worker, or a new primary,
	// finds each by its name (os.File.Name) with [SharedFile]. Names are
	// letters, digits and '-'.
	Shared []*os.File
	// Listener, when set, is the cluster's socket, opened by someone else
	// (systemd's socket activation): the supervisor adopts it instead of
	// binding Addr. A TCP listener, in ListenShared mode only.
	Listener net.Listener
	// Binary is what an upgrade executes as the new primary. Default: the
	// path this process was started from (os.Args[0], made absolute at
	// start), so that a new binary renamed over it, or a symlink flipped to
	// a new release, is what the upgrade runs. Symlinks are not resolved:
	// resolving them at start would pin the old release.
	Binary string

	// StartTimeout bounds a worker's start to ready; past it the worker is
	// killed and counted as a crash.
	StartTimeout time.Duration
	// RestartBackoff is the first restart delay after a crash; it doubles on
	// every crash of the same slot, up to RestartBackoffMax, and resets once a
	// worker has stayed ready for CrashWindow.
	RestartBackoff    time.Duration
	RestartBackoffMax time.Duration
	// More than MaxCrashes crashes (of all workers together) within
	// CrashWindow open the circuit: no more forks until a reload.
	MaxCrashes  int
	CrashWindow time.Duration

	// HeartbeatInterval is how often a worker reports its status.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long a ready worker may stay silent before it is
	// deemed hung: SIGQUIT (for its goroutine dump), then SIGKILL after
	// QuitGrace, then a restart.
	HeartbeatTimeout time.Duration
	QuitGrace        time.Duration

	// MaxRSS recycles a worker whose resident memory exceeds it (0: off).
	// MaxRequests recycles a worker after it served this many requests, plus
	// a random jitter of up to 10 % so that workers do not recycle in step
	// (0: off). Both are read from the heartbeats, and neither recycles a
	// worker ready for less than 10 heartbeat intervals, so that a limit a
	// fresh worker already passes costs one fork per worker every ten
	// heartbeats, not a fork loop.
	MaxRSS      uint64
	MaxRequests uint64

	// ShutdownTimeout bounds a worker's drain; stragglers are killed after it.
	ShutdownTimeout time.Duration

	// CarryOut and CarryIn carry the caller's state (its metrics' totals)
	// over a binary upgrade, opaque to procpool. CarryOut is called in the
	// old primary, on the supervisor's loop goroutine (it must not block),
	// twice: when the new primary is ready (provisional: this primary's
	// workers drain and serve on meanwhile) and once they have all exited
	// (final). CarryIn is called in the new primary with each, in that
	// order, from a goroutine of its own, one call at a time; the
	// provisional one returns before [Supervisor.TookOver] closes (unless
	// it took longer than 2 s to come). A final payload supersedes the
	// provisional one. Either may be nil: nothing is carried but the
	// supervisor's own counters ([Counts]).
	CarryOut func() []byte
	CarryIn  func(payload []byte, final bool)
}

// DefaultConfig returns the configuration hybrid serve uses without flags.
func DefaultConfig() Config {
	return Config{
		Addr:              ":8080",
		ListenMode:        ListenShared,
		AcceptBalance:     BalanceConns,
		Workers:           runtime.GOMAXPROCS(0),
		StartTimeout:      10 * time.Second,
		RestartBackoff:    time.Second,
		RestartBackoffMax: 30 * time.Second,
		MaxCrashes:        5,
		CrashWindow:       30 * time.Second,
		HeartbeatInterval: time.Second,
		HeartbeatTimeout:  10 * time.Second,
		QuitGrace:         2 * time.Second,
		ShutdownTimeout:   30 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Addr == "" {
		c.Addr = d.Addr
	}
	if c.ListenMode == "" {
		c.ListenMode = d.ListenMode
	}
	if c.AcceptBalance == "" {
		c.AcceptBalance = d.AcceptBalance
	}
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.MaxWorkers == 0 {
		c.MaxWorkers = max(c.Workers, min(1024, 8*runtime.NumCPU()))
	}
	if c.WorkerProcs == 0 {
		c.WorkerProcs = max(1, runtime.GOMAXPROCS(0)/c.Workers)
	}
	setDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setDur(&c.StartTimeout, d.StartTimeout)
	setDur(&c.RestartBackoff, d.RestartBackoff)
	setDur(&c.RestartBackoffMax, d.RestartBackoffMax)
	setDur(&c.CrashWindow, d.CrashWindow)
	setDur(&c.HeartbeatInterval, d.HeartbeatInterval)
	setDur(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	setDur(&c.QuitGrace, d.QuitGrace)
	setDur(&c.ShutdownTimeout, d.ShutdownTimeout)
	if c.MaxCrashes == 0 {
		c.MaxCrashes = d.MaxCrashes
	}
	return c
}

// Validate reports every invalid field at once. It checks c as [New] will
// run it: a zero duration or MaxCrashes stands for its default, so the
// relations between fields (the backoff and its cap, the heartbeat timeout
// and interval) are checked on the values that will apply; a negative one
// is refused.
func (c Config) Validate() error {
	var errs []error
	d := c.withDefaults()
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.ListenMode != ListenShared && c.ListenMode != ListenReusePort {
		bad("listen mode %q: want %q or %q", c.ListenMode, ListenShared, ListenReusePort)
	}
	if c.AcceptBalance != BalanceConns && c.AcceptBalance != BalanceOff {
		bad("accept balance %q: want %q or %q", c.AcceptBalance, BalanceConns, BalanceOff)
	}
	if c.Workers < 1 || c.Workers > 1024 {
		bad("workers %d: want 1 to 1024", c.Workers)
	}
	if c.MaxWorkers != 0 && (c.MaxWorkers < c.Workers || c.MaxWorkers > 1024) {
		bad("max workers %d: want 0 (auto) or workers (%d) to 1024", c.MaxWorkers, c.Workers)
	}
	if c.WorkerProcs < 0 {
		bad("worker procs %d: want 0 (auto) or more", c.WorkerProcs)
	}
	if c.MaxCrashes < 0 {
		bad("max crashes %d: want 1 or more (0: the default, %d)", c.MaxCrashes, DefaultConfig().MaxCrashes)
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"start timeout", c.StartTimeout},
		{"restart backoff", c.RestartBackoff},
		{"restart backoff max", c.RestartBackoffMax},
		{"crash window", c.CrashWindow},
		{"heartbeat interval", c.HeartbeatInterval},
		{"heartbeat timeout", c.HeartbeatTimeout},
		{"quit grace", c.QuitGrace},
		{"shutdown timeout", c.ShutdownTimeout},
	} {
		if f.v < 0 {
			bad("%s %v: want a positive duration (0: the default)", f.name, f.v)
		}
	}
	if c.RestartBackoff >= 0 && c.RestartBackoffMax >= 0 && d.RestartBackoff > d.RestartBackoffMax {
		bad("restart backoff %v exceeds its max %v", d.RestartBackoff, d.RestartBackoffMax)
	}
	if c.HeartbeatTimeout >= 0 && c.HeartbeatInterval >= 0 && d.HeartbeatTimeout < 2*d.HeartbeatInterval {
		bad("heartbeat timeout %v: want at least twice the heartbeat interval %v", d.HeartbeatTimeout, d.HeartbeatInterval)
	}
	return errors.Join(errs...)
}
