// Package isolate runs one job on untrusted input in a short-lived child
// process with hard limits, so that a crash, hang, memory bomb or exploit in
// that work costs one request an error and nothing else.
//
// It is a mechanism and knows nothing of the jobs or of HTTP: the parent
// ([Isolator.Run]) names a job and passes its parameters and input; the
// child ([Serve], wired by cmd/hybrid) looks the job up by name and runs it.
// Outcomes are sentinel and typed errors, which the caller maps.
//
// # Mechanism
//
// A child is this binary re-executed with [RoleEnv]=[RoleChild] (set by the
// parent, never by a user flag), an empty environment, an empty read-only
// working directory, its own process group, the parent-death signal, and
// only stdin, stdout, stderr and its input file open (every process of
// hybrid marks what it inherited close-on-exec at start, package
// internal/fds). The input file is a memfd of its own, which the child holds
// read-only: the parent writes each task's input there and the child maps
// it, instead of a copy through the pipe. When the worker
// is root, the child runs as an unprivileged user of its own
// ([Config.User]), so it can signal, trace or write nothing of root's.
// Before it reads any input it lowers its rlimits (CPU time, open files, no
// file writes, RLIMIT_DATA where no cgroup bounds its memory, no way back
// from the nice value it was given) and installs a seccomp allow-list
// (package internal/seccomp) on all its threads: no socket, no open, no new
// process, no signal to another process. A refused system call kills it
// (SIGSYS), which is [ErrViolation]. It then reads one frame on stdin (a
// JSON header naming the job, its params and its input's size), maps the
// input, writes one frame on stdout (a header, then the output) and exits,
// or serves up to Config.Reuse frames first. A child runs with one P
// (GOMAXPROCS=1): the isolator's parallelism is its children.
//
// Where a cgroup hierarchy is writable ([Config.Cgroup]: v2, v1, or none),
// each child runs in a cgroup with the memory limit and a task bound,
// taken from a pool of cgroups made once and emptied and reset between
// children, and entered at clone on v2. On v2 the primary first moves itself
// into a leaf, <own>/hybrid-procs ([PrepareCgroupV2]), because a cgroup
// with processes cannot enable controllers for cgroups below it; the
// children's cgroups go under <own>. The cgroup files stay root's: a
// child cannot raise its own limits. A wall clock covers the whole exchange
// and kills the child's process group and every task in its cgroup.
//
// # Invariants
//
//   - No input byte is read by the child before its limits and filter are in
//     place, and none is parsed by the parent: the parent checks only the
//     parameters.
//   - The parent trusts nothing the child says. The reply is bounded by
//     Job.MaxOutput and its header line by 64 KiB; a malformed frame, a
//     status outside 400–599 or a reply before its request was taken kills
//     the child and is a [*CrashError]. A *JobError's code is the caller's
//     to check against the codes it knows.
//   - Run never waits on a child without a timer, and nothing a child
//     started survives it: its process group and cgroup are emptied before
//     its cgroup is reused.
//
// # Outcomes
//
// Every run ends in one outcome, counted in [Stats]: ok; the job's own
// error ([*JobError], input_error); [ErrTimeout] (isolate_timeout);
// [ErrMemory] (memory_limit); [ErrCPU] (cpu_limit); [ErrViolation]
// (sandbox_violation); [*CrashError] (isolate_crashed, with the reason and
// the last 4 KiB of stderr in the log, never in the error).
package isolate
