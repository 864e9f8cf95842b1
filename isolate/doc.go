// Package isolate runs one workload on untrusted input in a short-lived child
// process with hard limits, so that a crash, hang, memory bomb or exploit in
// that work costs one request an error and nothing else.
//
// # Mechanism
//
// A child is this binary re-executed with [RoleEnv]=isolate (set by the
// parent, never by a user flag), an empty environment, an empty working
// directory and only stdin, stdout and stderr open. Before it reads any input
// it lowers its own rlimits (CPU time, open files, file size) and, where the
// parent found no memory cgroup, its data segment. It then reads one frame on
// stdin (a JSON header naming the workload and its params, then the input
// bytes), looks the workload up by name in the same registry the pool uses
// (handlers.Lookup), writes one frame on stdout and exits, or serves up to
// Config.Reuse frames first.
//
// The parent ([Isolator]) starts children from goroutines locked to their OS
// thread for the child's life (the parent-death signal follows the thread,
// golang/go#27505), each in its own process group and, where the kernel
// allows, in new user and network namespaces (no network). Where cgroup v1
// memory and pids controllers are writable, each child gets its own cgroup
// with the memory limit and a task bound before it is sent any input. A wall
// clock kills the child's process group and every task in its cgroup.
//
// # Outcomes
//
// Every run ends in one typed outcome, each with one HTTP status: ok; the
// workload's own error (its status, e.g. 422); isolate_timeout (504);
// memory_limit (422); cpu_limit (422); isolate_crashed (500, with the signal
// and the last 4 KiB of stderr in the log, never in the response); overloaded
// (503, from the admission in front of it).
package isolate
