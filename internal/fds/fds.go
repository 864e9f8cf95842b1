//go:build linux

// Package fds keeps inherited file descriptors from leaking into the
// processes this one starts.
//
// A process started by a launcher that leaves descriptors open (a shell
// redirect, a supervisor's socket, a test harness) passes every one of them
// to each child it execs, unless each is marked close-on-exec. Go marks the
// descriptors it opens, never the ones it inherited. hybrid's primary,
// workers and isolate children call [CloseOnExec] first thing, so what a
// child gets is exactly what its parent hands it on purpose (exec.Cmd's
// Stdin/Stdout/Stderr and ExtraFiles, which Go dup2s without the flag).
package fds

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeRangeCloexec is CLOSE_RANGE_CLOEXEC (Linux 5.11), which
// golang.org/x/sys/unix does not name.
const closeRangeCloexec = 1 << 2

var closeRange = unix.CloseRange // a test replaces it to exercise the fallback

// CloseOnExec marks every descriptor from first up close-on-exec. It uses
// close_range(2) where the kernel has it, and otherwise walks /proc/self/fd.
// It does not close anything: a descriptor this process still uses, such
// as an inherited listener, stays usable.
func CloseOnExec(first int) error {
	if err := closeRange(uint(first), ^uint(0), closeRangeCloexec); err == nil {
		return nil
	}
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd < first || fd == int(dir.Fd()) {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return err
		}
	}
	return nil
}
