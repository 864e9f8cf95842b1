//go:build linux && (amd64 || arm64)

package seccomp

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// eval runs a classic BPF seccomp program on one seccomp_data the way the
// kernel does, for the instructions build emits.
func eval(t *testing.T, prog []unix.SockFilter, arch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	var data [64]byte
	binary.LittleEndian.PutUint32(data[offNr:], nr)
	binary.LittleEndian.PutUint32(data[offArch:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(data[offArgs+8*i:], a)
	}
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K%4 != 0 || in.K+4 > uint32(len(data)) {
				t.Fatalf("pc %d: load at %d", pc, in.K)
			}
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			acc &= in.K
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
			cond := acc == in.K
			if in.Code&0xf0 == unix.BPF_JGE {
				cond = acc >= in.K
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		default:
			t.Fatalf("pc %d: unexpected instruction %#x", pc, in.Code)
		}
	}
	t.Fatal("program ran off its end")
	return 0
}

const (
	testPid = 4242
	allowed = unix.SECCOMP_RET_ALLOW
	killed  = unix.SECCOMP_RET_KILL_PROCESS
	enosys  = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	eperm   = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
)

// goThreadFlags are the flags of the runtime's newosproc on amd64.
const goThreadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_SYSVSEM | unix.CLONE_THREAD | unix.CLONE_SETTLS

// refusedCalls must be refused whatever their arguments.
var refusedCalls = []int{
	unix.SYS_OPENAT, unix.SYS_OPENAT2, unix.SYS_SOCKET, unix.SYS_SOCKETPAIR, unix.SYS_CONNECT,
	unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_ACCEPT4, unix.SYS_SENDTO, unix.SYS_SENDMSG,
	unix.SYS_EXECVE, unix.SYS_EXECVEAT, unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV,
	unix.SYS_PROCESS_VM_WRITEV, unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_CHROOT, unix.SYS_BPF, unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_PERF_EVENT_OPEN, unix.SYS_UNSHARE, unix.SYS_SETNS, unix.SYS_KEXEC_LOAD,
	unix.SYS_KEXEC_FILE_LOAD, unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_MKDIRAT, unix.SYS_MKNODAT, unix.SYS_UNLINKAT, unix.SYS_RENAMEAT2, unix.SYS_FCHMODAT,
	unix.SYS_FCHMOD, unix.SYS_FCHOWNAT, unix.SYS_FCHOWN, unix.SYS_TRUNCATE, unix.SYS_FTRUNCATE,
	unix.SYS_LINKAT, unix.SYS_SYMLINKAT, unix.SYS_NEWFSTATAT, unix.SYS_STATX, unix.SYS_FACCESSAT,
	unix.SYS_FACCESSAT2, unix.SYS_READLINKAT, unix.SYS_GETDENTS64, unix.SYS_IO_URING_SETUP,
	unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER, unix.SYS_USERFAULTFD, unix.SYS_PERSONALITY,
	unix.SYS_SETUID, unix.SYS_SETGID, unix.SYS_SETREUID, unix.SYS_SETREGID, unix.SYS_SETRESUID,
	unix.SYS_SETRESGID, unix.SYS_SETGROUPS, unix.SYS_SETFSUID, unix.SYS_SETFSGID, unix.SYS_CAPSET,
	unix.SYS_TKILL, unix.SYS_RT_SIGQUEUEINFO, unix.SYS_RT_TGSIGQUEUEINFO, unix.SYS_PIDFD_OPEN,
	unix.SYS_PIDFD_SEND_SIGNAL, unix.SYS_PIDFD_GETFD, unix.SYS_MEMFD_CREATE, unix.SYS_PRLIMIT64,
	unix.SYS_SETRLIMIT, unix.SYS_UNAME, unix.SYS_SPLICE, unix.SYS_TEE, unix.SYS_COPY_FILE_RANGE,
	unix.SYS_SENDFILE, unix.SYS_FCNTL, unix.SYS_IOCTL, unix.SYS_DUP3, unix.SYS_PKEY_MPROTECT,
	unix.SYS_MREMAP, unix.SYS_SECCOMP, unix.SYS_SETPRIORITY, unix.SYS_SCHED_SETAFFINITY,
	unix.SYS_SCHED_SETSCHEDULER, unix.SYS_GETPPID, unix.SYS_WAIT4, unix.SYS_WAITID,
	unix.SYS_MEMBARRIER, unix.SYS_SETITIMER, unix.SYS_TIMER_CREATE, unix.SYS_MINCORE, unix.SYS_SYSLOG,
	unix.SYS_ACCT, unix.SYS_SWAPON, unix.SYS_REBOOT, unix.SYS_QUOTACTL, unix.SYS_FANOTIFY_INIT,
	unix.SYS_INOTIFY_INIT1, unix.SYS_NAME_TO_HANDLE_AT, unix.SYS_OPEN_BY_HANDLE_AT,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_FSOPEN, unix.SYS_FSMOUNT, unix.SYS_MOUNT_SETATTR,
	unix.SYS_LANDLOCK_CREATE_RULESET, unix.SYS_PROCESS_MADVISE, unix.SYS_KCMP, unix.SYS_MSGGET,
	unix.SYS_SHMGET, unix.SYS_SEMGET, unix.SYS_MQ_OPEN, unix.SYS_VHANGUP,
}

// archRefusedCalls are calls that exist on one architecture only, which its
// test file adds (arch_amd64_test.go).
var archRefusedCalls []int

func TestFilterVerdicts(t *testing.T) {
	kill, err := build(program(testPid), Policy{})
	if err != nil {
		t.Fatal(err)
	}
	errno, err := build(program(testPid), Policy{Errno: unix.EPERM})
	if err != nil {
		t.Fatal(err)
	}
	if len(kill) > 255 {
		t.Errorf("program is %d instructions; jumps past 255 would not assemble", len(kill))
	}
	type tc struct {
		name string
		nr   int
		args []uint64
		want uint32 // under the kill policy; refusals become EPERM under Errno
	}
	cases := []tc{
		{"futex wait private", unix.SYS_FUTEX, []uint64{0, futexWait | futexPrivateFlag}, allowed},
		{"futex wake private", unix.SYS_FUTEX, []uint64{0, futexWake | futexPrivateFlag}, allowed},
		{"futex wait shared", unix.SYS_FUTEX, []uint64{0, futexWait}, allowed},
		{"futex lock_pi", unix.SYS_FUTEX, []uint64{0, 6 | futexPrivateFlag}, killed},
		{"futex cmp_requeue", unix.SYS_FUTEX, []uint64{0, 4}, killed},
		{"futex wait_bitset", unix.SYS_FUTEX, []uint64{0, 9}, killed},
		{"tgkill self", unix.SYS_TGKILL, []uint64{testPid, 7, 23}, allowed},
		{"tgkill self, high bits", unix.SYS_TGKILL, []uint64{1<<32 | testPid, 7, 23}, allowed},
		{"tgkill other", unix.SYS_TGKILL, []uint64{testPid + 1, testPid + 1, 9}, killed},
		{"kill self", unix.SYS_KILL, []uint64{testPid, 6}, allowed},
		{"kill group", unix.SYS_KILL, []uint64{0, 9}, killed},
		{"kill everyone", unix.SYS_KILL, []uint64{1<<32 - 1, 9}, killed},
		{"kill parent", unix.SYS_KILL, []uint64{1, 9}, killed},
		{"mmap rw", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}, allowed},
		{"mmap none", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_NONE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_FIXED}, allowed},
		{"mmap droppable", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, mapDroppable | unix.MAP_ANONYMOUS}, allowed},
		{"mmap rx", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}, killed},
		{"mmap shared", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_ANONYMOUS}, killed},
		{"mmap shared validate", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, 3 | unix.MAP_ANONYMOUS}, killed},
		{"mmap hugetlb", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB}, killed},
		{"mmap locked", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_LOCKED}, killed},
		{"mprotect rw", unix.SYS_MPROTECT, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, allowed},
		{"mprotect rwx", unix.SYS_MPROTECT, []uint64{0, 4096, 7}, killed},
		{"madvise dontneed", unix.SYS_MADVISE, []uint64{0, 4096, unix.MADV_DONTNEED}, allowed},
		{"madvise free", unix.SYS_MADVISE, []uint64{0, 4096, unix.MADV_FREE}, allowed},
		{"madvise collapse", unix.SYS_MADVISE, []uint64{0, 4096, unix.MADV_COLLAPSE}, allowed},
		{"madvise mergeable", unix.SYS_MADVISE, []uint64{0, 4096, unix.MADV_MERGEABLE}, killed},
		{"madvise hwpoison", unix.SYS_MADVISE, []uint64{0, 4096, unix.MADV_HWPOISON}, killed},
		{"prctl set_vma", unix.SYS_PRCTL, []uint64{unix.PR_SET_VMA, 0}, allowed},
		{"prctl seccomp", unix.SYS_PRCTL, []uint64{unix.PR_SET_SECCOMP, 2}, killed},
		{"prctl dumpable", unix.SYS_PRCTL, []uint64{unix.PR_SET_DUMPABLE, 1}, killed},
		{"clone go thread", unix.SYS_CLONE, []uint64{goThreadFlags}, allowed},
		{"clone fork", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, killed},
		{"clone vfork", unix.SYS_CLONE, []uint64{unix.CLONE_VM | unix.CLONE_VFORK | uint64(unix.SIGCHLD)}, killed},
		{"clone thread in a new netns", unix.SYS_CLONE, []uint64{goThreadFlags | unix.CLONE_NEWNET}, killed},
		{"clone thread in a new userns", unix.SYS_CLONE, []uint64{goThreadFlags | unix.CLONE_NEWUSER}, killed},
		{"clone3", unix.SYS_CLONE3, []uint64{0, 88}, enosys},
		{"read", unix.SYS_READ, []uint64{0}, allowed},
		{"exit_group", unix.SYS_EXIT_GROUP, nil, allowed},
	}
	for _, nr := range append(refusedCalls, archRefusedCalls...) {
		cases = append(cases, tc{fmt.Sprintf("syscall %d", nr), nr, []uint64{0, 0, 0, 0, 0, 0}, killed})
	}
	for _, c := range cases {
		if got := eval(t, kill, auditArch, uint32(c.nr), c.args...); got != c.want {
			t.Errorf("%s (nr %d %v): action %#x; want %#x", c.name, c.nr, c.args, got, c.want)
		}
		want := c.want
		if want == killed {
			want = eperm
		}
		if got := eval(t, errno, auditArch, uint32(c.nr), c.args...); got != want {
			t.Errorf("%s (nr %d %v), Errno policy: action %#x; want %#x", c.name, c.nr, c.args, got, want)
		}
	}

	// Every rule allows its own call with the first value it names.
	for _, r := range program(testPid) {
		args := make([]uint64, 6)
		for _, c := range r.conds {
			args[c.arg] = uint64(c.values[0])
		}
		if got := eval(t, kill, auditArch, r.nr, args...); got != allowed {
			t.Errorf("rule for %d with %v: action %#x; want allowed", r.nr, args, got)
		}
	}

	// Another architecture kills under either policy, even for read.
	for _, prog := range [][]unix.SockFilter{kill, errno} {
		if got := eval(t, prog, unix.AUDIT_ARCH_I386, unix.SYS_READ); got != killed {
			t.Errorf("read from AUDIT_ARCH_I386: action %#x; want kill", got)
		}
	}
}
