//go:build linux && (amd64 || arm64)

package seccomp

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// rule allows one system call: for any arguments without conds, else only
// when every cond holds. A cond holds when the low 32 bits of args[arg],
// ANDed with mask, equal one of values. The low 32 bits are the whole
// argument for every rule below (an int, a pid_t, or flags the kernel reads
// as 32 bits), so the upper half cannot smuggle anything past a rule.
type rule struct {
	nr    uint32
	conds []cond
}

type cond struct {
	arg    int
	mask   uint32
	values []uint32
}

func always(nr int) rule { return rule{nr: uint32(nr)} }

func argIn(nr, arg int, mask uint32, values ...uint32) rule {
	return rule{nr: uint32(nr), conds: []cond{{arg: arg, mask: mask, values: values}}}
}

// and adds a condition on another argument.
func (r rule) and(arg int, mask uint32, values ...uint32) rule {
	r.conds = append(r.conds[:len(r.conds):len(r.conds)], cond{arg: arg, mask: mask, values: values})
	return r
}

// Argument values the rules test, which x/sys/unix does not name.
const (
	futexWait          = 0
	futexWake          = 1
	futexPrivateFlag   = 128
	futexClockRealtime = 256
	futexCmdMask       = ^uint32(futexPrivateFlag | futexClockRealtime)
)

// The mapping type bits of mmap's flags, and MAP_DROPPABLE (Linux 6.11,
// which the runtime's vgetrandom state uses), which x/sys/unix does not name.
const (
	mapTypeMask  = 0x0f
	mapDroppable = 0x08
)

// namespaceFlags are the clone flags that would make a namespace.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET

// program is the allow-list, most frequent calls first (the filter tests
// them in order). pid is the process's own pid, the only one it may signal.
//
// "Observed" means seen with strace -f in real isolate children (cmd/hybrid
// with HYBRID_ROLE=isolate) after their first read of stdin, across every
// workload: hash (all algorithms), password-hash and -verify (argon2id,
// bcrypt, scrypt), compress and decompress (zstd, gzip, brotli, s2, snappy),
// image-resize and image-info (JPEG, PNG, GIF, WebP in and out); the same
// children then ran every workload under this filter (the static build,
// kill policy) without a refusal, one request per child and 46 in one
// reused child. The other entries are calls the Go runtime's source
// (runtime/sys_linux_*.s, os_linux.go, mem_linux.go, netpoll_epoll.go,
// proc.go) can make at any time after start-up.
func program(pid int) []rule {
	self := uint32(pid)
	return append([]rule{
		// Observed: runtime locks, notes, park/unpark of Ms (futexsleep,
		// futexwakeup). Only FUTEX_WAIT and FUTEX_WAKE (private or not): no
		// PI, requeue or wait-multiple.
		argIn(unix.SYS_FUTEX, 1, futexCmdMask, futexWait, futexWake),
		// Observed: runtime usleep (spinning Ms, sysmon's 20 µs to 10 ms naps).
		always(unix.SYS_NANOSLEEP),
		// Observed: the request frame from stdin, the response to stdout,
		// messages to stderr.
		always(unix.SYS_READ),
		always(unix.SYS_WRITE),
		// Observed: runtime osyield (GC, spinning on locks).
		always(unix.SYS_SCHED_YIELD),
		// Observed: async preemption (and crash signals) send
		// tgkill(getpid(), tid, SIGURG) to one of the process's own threads.
		always(unix.SYS_GETPID),
		argIn(unix.SYS_TGKILL, 0, ^uint32(0), self),
		// Observed: the return from every signal handler (SIGURG above).
		always(unix.SYS_RT_SIGRETURN),
		// Observed: heap growth, stacks, GC metadata. Never executable, and
		// only private (or, for the vDSO getrandom state, droppable) memory:
		// a shared anonymous mapping is not counted by RLIMIT_DATA, which
		// is the memory bound where no cgroup is writable, nor are huge TLB
		// pages by a memory cgroup by default; locked memory is not needed.
		argIn(unix.SYS_MMAP, 2, unix.PROT_EXEC, 0).
			and(3, mapTypeMask|unix.MAP_HUGETLB|unix.MAP_LOCKED, unix.MAP_PRIVATE, mapDroppable),
		// Runtime sysFree (heap and stack release).
		always(unix.SYS_MUNMAP),
		// Runtime scavenger (sysUnused: MADV_FREE, else MADV_DONTNEED),
		// sysFault, and huge page hints (sysHugePage, sysNoHugePage,
		// sysHugePageCollapse). No other advice (MADV_MERGEABLE, the KSM
		// side channel, in particular).
		argIn(unix.SYS_MADVISE, 2, ^uint32(0), unix.MADV_DONTNEED, unix.MADV_FREE,
			unix.MADV_HUGEPAGE, unix.MADV_NOHUGEPAGE, unix.MADV_COLLAPSE),
		// Runtime sysFault (PROT_NONE, with GODEBUG=efence and the like).
		// Never executable.
		argIn(unix.SYS_MPROTECT, 2, unix.PROT_EXEC, 0),
		// Runtime names for its mappings: prctl(PR_SET_VMA,
		// PR_SET_VMA_ANON_NAME) after every mmap and madvise above, on kernels
		// with CONFIG_ANON_VMA_NAME (the strace box's kernel answers EINVAL,
		// after which the runtime stops asking). No other prctl.
		argIn(unix.SYS_PRCTL, 0, ^uint32(0), unix.PR_SET_VMA),
		// Runtime nanotime and walltime when the vDSO is missing.
		always(unix.SYS_CLOCK_GETTIME),
		// A new thread for the runtime (newosproc: CLONE_VM|CLONE_FS|
		// CLONE_FILES|CLONE_SIGHAND|CLONE_SYSVSEM|CLONE_THREAD|CLONE_SETTLS):
		// workloads that block in a syscall or lock an OS thread make one at
		// any time. Only with CLONE_THREAD (which the kernel accepts only
		// with CLONE_VM and CLONE_SIGHAND: a thread of this process, under
		// this filter) and without namespace flags. Never a new process.
		argIn(unix.SYS_CLONE, 0, unix.CLONE_THREAD|namespaceFlags, unix.CLONE_THREAD),
		// The first steps of a new thread (minit: gettid, sigaltstack,
		// rt_sigprocmask) and the last of one that exits (unminit, exit).
		always(unix.SYS_GETTID),
		always(unix.SYS_SIGALTSTACK),
		always(unix.SYS_RT_SIGPROCMASK),
		always(unix.SYS_EXIT),
		// Observed: the end of every child.
		always(unix.SYS_EXIT_GROUP),
		// Observed (password-hash: the first timer starts the netpoller):
		// netpollinit (epoll_create1, eventfd2, epoll_ctl), then netpoll's
		// epoll_pwait from the scheduler and sysmon, and netpollBreak's
		// write and read of the eventfd. Only new descriptors of these
		// kinds, within RLIMIT_NOFILE.
		always(unix.SYS_EPOLL_PWAIT),
		always(unix.SYS_EPOLL_CTL),
		always(unix.SYS_EPOLL_CREATE1),
		always(unix.SYS_EVENTFD2),
		// Observed: crypto/rand (password salts) where the vDSO has no
		// getrandom.
		always(unix.SYS_GETRANDOM),
		// Sysmon, once a second (Go 1.25+ GOMAXPROCS updates): the CPU
		// affinity, and a pread of the cgroup CPU limit file the runtime
		// opened at start-up. Observed in children that live past a second.
		always(unix.SYS_SCHED_GETAFFINITY),
		always(unix.SYS_PREAD64),
		// The kernel restarts a nanosleep or futex wait that a signal (async
		// preemption) interrupted with restart_syscall; seccomp sees it.
		always(unix.SYS_RESTART_SYSCALL),
		// A Go crash: dieFromSignal resets the handler (rt_sigaction),
		// unblocks the signal and raises it with tgkill or kill(getpid());
		// os/signal also sets handlers.
		always(unix.SYS_RT_SIGACTION),
		argIn(unix.SYS_KILL, 0, ^uint32(0), self),
		// Closing a descriptor the process holds (os.File.Close and its
		// finalizer). Harmless: it cannot reopen anything.
		always(unix.SYS_CLOSE),
	}, cgoRules()...)
}

// Offsets in struct seccomp_data. amd64 and arm64 are little-endian: the low
// 32 bits of args[i] come first.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// label names a place in an assembled program.
type label int

// next is the label of the following instruction: no jump.
const next label = -1

// asm assembles classic BPF with forward jumps to labels.
type asm struct {
	prog   []unix.SockFilter
	labels []int // pc of each label; -1 until bound
	jumps  []jump
}

type jump struct {
	pc     int
	jt, jf label
}

func (a *asm) label() label {
	a.labels = append(a.labels, -1)
	return label(len(a.labels) - 1)
}

func (a *asm) bind(l label) { a.labels[l] = len(a.prog) }

func (a *asm) stmt(code uint16, k uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: code, K: k})
}

// jmp is a conditional jump: to jt if A op k, else to jf.
func (a *asm) jmp(op uint16, k uint32, jt, jf label) {
	a.jumps = append(a.jumps, jump{pc: len(a.prog), jt: jt, jf: jf})
	a.stmt(unix.BPF_JMP|op|unix.BPF_K, k)
}

func (a *asm) assemble() ([]unix.SockFilter, error) {
	for _, j := range a.jumps {
		jt, err := a.offset(j.pc, j.jt)
		if err != nil {
			return nil, err
		}
		jf, err := a.offset(j.pc, j.jf)
		if err != nil {
			return nil, err
		}
		a.prog[j.pc].Jt, a.prog[j.pc].Jf = jt, jf
	}
	if len(a.prog) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("seccomp: filter of %d instructions is too long", len(a.prog))
	}
	return a.prog, nil
}

// offset is the jump offset from the instruction at pc to label l.
func (a *asm) offset(pc int, l label) (uint8, error) {
	if l == next {
		return 0, nil
	}
	to := a.labels[l]
	if to <= pc || to-(pc+1) > 255 {
		return 0, fmt.Errorf("seccomp: filter jump from %d to %d out of range", pc, to)
	}
	return uint8(to - (pc + 1)), nil
}

// build assembles the filter for rules under policy p.
func build(rules []rule, p Policy) ([]unix.SockFilter, error) {
	refuseAction := uint32(unix.SECCOMP_RET_KILL_PROCESS)
	if p.Errno != 0 {
		refuseAction = unix.SECCOMP_RET_ERRNO | uint32(p.Errno)&unix.SECCOMP_RET_DATA
	}
	a := asm{prog: make([]unix.SockFilter, 0, 128), jumps: make([]jump, 0, 96), labels: make([]int, 0, 64)}
	allow, refuse, kill, enosys := a.label(), a.label(), a.label(), a.label()

	a.stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offArch)
	a.jmp(unix.BPF_JEQ, auditArch, next, kill)
	a.stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offNr)
	if x32Bit != 0 {
		a.jmp(unix.BPF_JGE, x32Bit, kill, next)
	}
	a.jmp(unix.BPF_JEQ, unix.SYS_CLONE3, enosys, next)
	for _, r := range rules {
		if len(r.conds) == 0 {
			a.jmp(unix.BPF_JEQ, r.nr, allow, next)
			continue
		}
		skip := a.label()
		a.jmp(unix.BPF_JEQ, r.nr, next, skip)
		for ci, c := range r.conds {
			pass := allow // the last condition allows; the others lead to the next
			if ci < len(r.conds)-1 {
				pass = a.label()
			}
			a.stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, uint32(offArgs+8*c.arg))
			if c.mask != ^uint32(0) {
				a.stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, c.mask)
			}
			for i, v := range c.values {
				jf := next
				if i == len(c.values)-1 {
					jf = refuse
				}
				a.jmp(unix.BPF_JEQ, v, pass, jf)
			}
			if pass != allow {
				a.bind(pass)
			}
		}
		a.bind(skip) // A still holds the number here
	}
	a.bind(refuse)
	a.stmt(unix.BPF_RET|unix.BPF_K, refuseAction)
	a.bind(allow)
	a.stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW)
	a.bind(kill)
	a.stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_KILL_PROCESS)
	a.bind(enosys)
	a.stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS))
	return a.assemble()
}
