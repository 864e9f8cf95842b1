// Package procpool runs a prefork cluster: one primary process that binds the
// listening socket and supervises N worker processes, each a re-execution of
// the same binary, that serve on that socket.
//
// # Mechanism
//
// The primary ([Supervisor]) binds the socket once and re-executes
// /proc/self/exe for every worker with [RoleEnv]=worker in its environment (the
// role is never a user-facing flag, as with Node's NODE_UNIQUE_ID). Each worker
// inherits these descriptors:
//
//   - fd 3: a duplicate of the listening socket (listen mode "shared"), or
//     nothing (listen mode "reuseport": the worker binds its own SO_REUSEPORT
//     socket on the address the primary reserved).
//   - fd 4: one end of a private unix socketpair, the control channel. The worker
//     writes newline-delimited JSON messages on it: one "ready" (with its
//     version and build) once its server accepts, then a "heartbeat" every
//     interval, or one "fatal" before it exits with [ExitConfig]. The primary
//     writes only "pool" (a task-pool size, [Supervisor.SetPoolSize]); EOF
//     tells the worker the primary is gone.
//   - fd 5: the accept board (shared mode, unless Config.AcceptBalance is
//     "off" or Config.MaxWorkers is 1): a memfd page where each worker keeps
//     its open connection count, so that a worker ahead lets the others accept
//     first. It has 2 × Config.MaxWorkers entries from the start, so that
//     [Supervisor.Scale] never needs a new one; a worker started when every
//     entry is taken serves outside the balance. See board.go for why and the
//     bounds.
//
// # Run-time controls
//
// [Supervisor.Reload] rolls the workers (SIGHUP), [Supervisor.Scale] sets
// their number (SIGTTIN, SIGTTOU), [Supervisor.SetPoolSize] their task-pool
// size, and [Supervisor.Upgrade] replaces the primary itself (SIGUSR2):
//
//  1. The old primary executes Config.Binary with its own arguments, handing
//     it the cluster's socket (fd 3), a pipe (fd 4), a second pipe the
//     other way (fd 5, "carry") and the listeners given to
//     [Supervisor.PassOn] (fd 6…), named in HYBRID_UPGRADE.
//  2. The new primary adopts the socket (it never binds), starts its own
//     workers with its own accept board, and once every one is ready writes
//     "ready" on the pipe; a worker that fails first makes it write "fail
//     <why>".
//  3. On "ready" the old primary drains its workers as on SIGTERM and exits;
//     the new one serves on. On "fail", on the new primary's exit, or past
//     Config.StartTimeout, the old primary stops the new one (SIGTERM to its
//     process group, SIGKILL to the group 3 s later; its workers follow by
//     their control channel's EOF) and keeps serving: a rollback, in its log
//     and in [Snapshot].LastUpgrade. A shutdown of the old primary during an
//     upgrade rolls it back too, and Run returns only once the new primary
//     has exited.
//
// Counters survive an upgrade: on the carry pipe the old primary writes
// one versioned JSON line with its totals on "ready" (provisional: its
// workers drain and serve on) and one once they have all exited (final),
// then closes it. Each line holds its own counters ([Counts]: forks,
// crashes, restarts, reloads, upgrades) and Config.CarryOut's opaque
// payload (hybrid's: its metrics' totals), which the new primary hands to
// Config.CarryIn. The new primary's [Snapshot] counts on from them; the
// final line supersedes the provisional one, so no counter goes backwards.
//
// Until it has written "ready" and has the provisional totals (or waited
// 2 s for them), the new primary does not serve the listeners it
// inherited through PassOn ([Supervisor.TookOver]): the old one answers
// every request on them until "ready". A new primary already shutting down
// (rolled back just as it wrote "ready") never takes over.
//
// The old primary names itself in upgradeEnv (from=<pid>,
// [Supervisor.UpgradedFrom]): a --binary wrapper that runs the new binary
// as its child would otherwise be taken for it.
//
// The new primary has no parent-death signal: it must outlive the old one.
// Should the old one die during the upgrade, the new one serves on.
//
// The worker side of that contract is [Attach] and [Worker].
//
// # Invariants
//
//   - At most one reload or upgrade runs at a time: asking for another gets
//     [ErrBusy], never a queue: a storm of requests runs only as many as
//     complete while it lasts, one after another.
//   - At most two primaries run: an upgrade asked of a primary whose old
//     primary still drains its workers (its carry pipe has not ended) gets
//     [ErrBusy]. A storm of upgrades therefore leaves one old primary and
//     its draining workers, not one per upgrade, each lingering up to its
//     Config.ShutdownTimeout.
//   - At most 2 × the worker count workers drain at once: past it the oldest
//     gets 1 s more, then SIGKILL; past it by the worker count, SIGKILL at
//     once. A storm of reloads therefore leaves at most 4 × workers + 1
//     worker processes alive, whatever --shutdown-timeout is.
//   - An upgrade never closes the listening socket: both primaries hold it
//     until the old one has exited, and connections queued on it meanwhile
//     are served by whichever primary's workers accept them.
//   - As PID 1 (a container) the primary refuses an upgrade ([ErrUnsupported]):
//     PID 1 cannot exit without ending the namespace; the orchestrator's
//     rolling update replaces the container instead.
//   - The primary never serves requests and never forks in a loop: every
//     unexpected exit is a crash, restarts wait an exponential backoff, and more
//     than Config.MaxCrashes crashes within Config.CrashWindow open a circuit
//     that stops all forking until a reload. A worker that exits with
//     [ExitConfig] opens the circuit at once: retrying a configuration error
//     cannot succeed.
//   - Exits the primary asked for (drain on shutdown, reload or recycle) are
//     never crashes.
//   - A worker is replaced only after its successor is ready, so capacity never
//     dips during a reload or recycle; if the successor fails, the old worker
//     keeps serving and the reload stops.
//   - No orphans: a worker learns of its primary's death from the control
//     channel's EOF and from its parent-death signal, and exits within
//     [OrphanGrace]. The parent-death signal fires when the *thread* that forked
//     the child exits (golang/go#27505), so every worker is started and waited
//     for from a goroutine locked to its OS thread for the worker's whole life.
//
// # Operational notes
//
// (*net.TCPListener).File puts the shared socket into blocking mode for every
// process holding it, after which a worker's Close cannot interrupt accept4 and
// the worker hangs on drain (golang/go#29277). The primary therefore hands out
// an F_DUPFD_CLOEXEC duplicate wrapped with os.NewFile, which keeps the file
// description non-blocking.
//
// With the shared socket, connections waiting in the accept queue belong to the
// socket, not to a worker: a draining worker closes only its own descriptor
// and loses nothing. Only the last close of the socket (on a full stop) resets
// what is still queued; each worker's server therefore takes the queued
// connections with non-blocking accepts right before it closes its
// descriptor, and serves them (server's listener.stop). A SO_REUSEPORT socket
// has its own queue, and connections queued on it are reset when its worker
// closes it (unless the host enables net.ipv4.tcp_migrate_req); the same
// sweep narrows that to the one system call between the worker's last accept
// and its close, but new connections keep being hashed to the socket until
// then. That is why "shared" is the default.
package procpool
