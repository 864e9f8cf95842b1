//go:build linux && (amd64 || arm64)

package seccomp

import (
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Supported reports whether Install has a filter for this platform.
func Supported() bool { return true }

// syncAttempts bounds the tries of a TSYNC install that a thread refused.
const syncAttempts = 8

// Install puts the allow-list filter (see the package doc) on every thread
// of the calling process, for the rest of its life. It returns nil once the
// filter holds; on an error nothing was installed, except that
// PR_SET_NO_NEW_PRIVS may already be set.
func Install(p Policy) error {
	_, err := install(p)
	return err
}

// install is Install that also reports how many seccomp calls it made, for
// the tests that count TSYNC failures.
func install(p Policy) (attempts int, err error) {
	if p.Errno > maxErrno {
		return 0, fmt.Errorf("%w: %d", ErrBadErrno, p.Errno)
	}
	filter, err := build(program(unix.Getpid()), p)
	if err != nil {
		return 0, err
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}

	// No-new-privs is a property of a thread: set it on the thread that
	// installs the filter (TSYNC then sets it on the others).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("seccomp: prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	var tid uintptr
	for attempts = 1; attempts <= syncAttempts; attempts++ {
		r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
			unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
		runtime.KeepAlive(filter)
		switch {
		case errno == 0 && r == 0:
			return attempts, nil
		case errno == 0: // r is the TID of a thread the kernel could not sync
			tid = r
		case errors.Is(errno, unix.ESRCH): // the same, for a TID we cannot see
			tid = 0
		default:
			return attempts, fmt.Errorf("seccomp: seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): %w", errno)
		}
		time.Sleep(time.Duration(attempts) * 100 * time.Microsecond)
	}
	return syncAttempts, fmt.Errorf("%w: thread %d refused %d attempts", ErrThreadSync, tid, syncAttempts)
}
