package seccomp

import (
	"errors"
	"syscall"
)

// Policy is what the filter does beyond the Go runtime's needs. The zero
// Policy kills the process on any refused call.
type Policy struct {
	// Errno, if non-zero, makes a refused system call fail with this errno
	// (1 to 4095) instead of killing the process. It is a syscall.Errno, the
	// same type as unix.Errno. A call for the wrong architecture still kills.
	Errno syscall.Errno
}

// maxErrno is the largest errno the kernel returns as an error (MAX_ERRNO).
const maxErrno = 4095

var (
	// ErrUnsupported is returned by Install where this build has no filter
	// (see Supported).
	ErrUnsupported = errors.New("seccomp: no filter for this platform")
	// ErrThreadSync is returned by Install when the kernel could not put the
	// filter on one of the process's threads (SECCOMP_FILTER_FLAG_TSYNC
	// failed) on every attempt. Nothing is installed then.
	ErrThreadSync = errors.New("seccomp: could not synchronise the filter to every thread")
	// ErrBadErrno is returned by Install when Policy.Errno is out of range.
	ErrBadErrno = errors.New("seccomp: Policy.Errno out of range 1 to 4095")
)
