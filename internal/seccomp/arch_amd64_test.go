//go:build linux

package seccomp

import (
	"fmt"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() {
	// open(2) exists only on amd64; the filter refuses it like openat.
	refusedActions["open-legacy"] = func(facts) error {
		path, _ := unix.BytePtrFromString("/etc/hostname")
		fd, _, errno := unix.Syscall(unix.SYS_OPEN, uintptr(unsafe.Pointer(path)), unix.O_RDONLY, 0)
		if errno == 0 {
			unix.Close(int(fd))
		}
		return errnoOrNil(errno)
	}
	helpers["x32"] = func(Policy, facts) int {
		_, _, errno := unix.RawSyscall(unix.SYS_GETPID|x32Bit, 0, 0, 0)
		fmt.Fprintf(os.Stderr, "x32 getpid survived: %v\n", errno)
		return exitSurvived
	}
}

// TestX32Killed: an x32 call kills even under the Errno policy.
func TestX32Killed(t *testing.T) {
	for _, errno := range []bool{false, true} {
		if c := runChild(t, "x32", childOpts{errno: errno}); !c.killedBySIGSYS() {
			t.Errorf("errno policy %v: %v; want killed by SIGSYS", errno, c)
		}
	}
}

// The calls that exist only on amd64; the filter refuses them too (arm64
// has only the *at forms of the file calls, which refusedCalls covers).
func init() {
	archRefusedCalls = append(archRefusedCalls, amd64RefusedCalls...)
}

var amd64RefusedCalls = []int{
	unix.SYS_OPEN, unix.SYS_CREAT, unix.SYS_STAT, unix.SYS_LSTAT, unix.SYS_ACCESS, unix.SYS_FORK,
	unix.SYS_VFORK, unix.SYS_MKDIR, unix.SYS_RMDIR, unix.SYS_UNLINK, unix.SYS_RENAME, unix.SYS_CHMOD,
	unix.SYS_CHOWN, unix.SYS_LCHOWN, unix.SYS_LINK, unix.SYS_SYMLINK, unix.SYS_READLINK, unix.SYS_MKNOD,
	unix.SYS_PIPE, unix.SYS_DUP2, unix.SYS_EPOLL_WAIT, unix.SYS_UTIMES, unix.SYS_IOPL, unix.SYS_IOPERM,
	unix.SYS_MODIFY_LDT, unix.SYS_ARCH_PRCTL, unix.SYS_USELIB, unix.SYS_SYSFS, unix.SYS_GETDENTS,
}

// TestX32Verdict: the x32 twin of an allowed call kills under either policy.
func TestX32Verdict(t *testing.T) {
	for _, p := range []Policy{{}, {Errno: unix.EPERM}} {
		prog, err := build(program(testPid), p)
		if err != nil {
			t.Fatal(err)
		}
		if got := eval(t, prog, auditArch, unix.SYS_READ|x32Bit); got != killed {
			t.Errorf("x32 read under %+v: action %#x; want kill", p, got)
		}
	}
}
