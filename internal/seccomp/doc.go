// Package seccomp confines an isolate child to the system calls that a Go
// program running a CPU workload between two pipes needs: an allow-list
// seccomp-bpf filter that the process installs on itself.
//
// # Mechanism
//
// [Install] sets PR_SET_NO_NEW_PRIVS, then loads one classic BPF program with
// seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC), so that every
// thread the process already has gets the filter in the same step and every
// thread it makes later inherits it. If the kernel reports a thread it could
// not synchronise (a positive TID), nothing was installed and Install tries
// again a few times before it returns [ErrThreadSync].
//
// The program checks, in order:
//
//  1. seccomp_data.arch is this build's AUDIT_ARCH (and on amd64 the call is
//     not an x32 one, bit 0x40000000 of the number). Otherwise: kill.
//  2. The number is on the allow-list (filter_linux.go, where each entry says
//     which path of the Go runtime or of the workloads makes the call, as
//     observed with strace on the real isolate child). Some entries are
//     allowed only for some values of one argument: signals only to this
//     process's own pid, clone only for a new thread (CLONE_THREAD, no
//     namespace flag), mmap and mprotect never with PROT_EXEC, futex only wait
//     and wake, madvise only the advice the runtime gives, prctl only
//     PR_SET_VMA (the runtime's names for its mappings).
//  3. clone3 fails with ENOSYS, so that code that tries it falls back to
//     clone, where the thread rule applies. Go's runtime does not use clone3.
//  4. Anything else is refused.
//
// # Invariants
//
//   - Once Install returns nil the filter holds for every thread of the
//     process until it exits; it cannot be removed or loosened, only narrowed
//     by another filter.
//   - The process can no longer open a file (open, openat, openat2, creat,
//     stat by path), make a socket, fork, exec, signal another process, make
//     a namespace, change its credentials, trace, mount, load BPF or modules,
//     or map executable memory. It can still read and write the descriptors it
//     has (stdin, stdout, stderr, and the cgroup file the runtime keeps open
//     for GOMAXPROCS), allocate, run goroutines on new threads, sleep, use
//     timers and the netpoller, read the clock and get random bytes.
//   - A refused call kills the whole process with SIGSYS
//     (SECCOMP_RET_KILL_PROCESS): a parent sees a WaitStatus that is
//     Signaled() with SIGSYS. Policy.Errno makes refused calls fail with that
//     errno instead; a wrong architecture or an x32 call kills in either mode.
//     A killed process dumps core if RLIMIT_CORE allows, so set it to 0 first.
//
// # When to call it
//
// After everything that needs a refused call is done (runtime start-up,
// package init, opening files, setrlimit) and before the first byte of
// untrusted input is read. Things that stop working after it: os/exec, net,
// os.Open and friends, os.File.Stat, CPU profiling (setitimer,
// timer_create), setrlimit, and io.Copy from one *os.File to another (it
// asks uname for the kernel version, then tries copy_file_range and splice):
// copy through a buffer (bufio) instead.
//
// A cgo build (the race detector's, the tests') makes its threads with
// glibc, which needs rseq, set_robust_list and brk as well (cgo_on.go); the
// shipped static build does not get them.
//
// Install exists on linux/amd64 and linux/arm64 ([Supported]); elsewhere it
// returns [ErrUnsupported].
package seccomp
