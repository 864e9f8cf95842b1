//go:build linux

package seccomp

import "golang.org/x/sys/unix"

// auditArch is the seccomp_data.arch of this build's system calls. A call
// made through another ABI (int 0x80 for i386) carries another value and is
// killed.
const auditArch = unix.AUDIT_ARCH_X86_64

// x32Bit marks a call of the x32 ABI, which shares AUDIT_ARCH_X86_64 with
// amd64 but has its own numbers. Any number at or above it is killed.
//
// Calls that exist only on amd64 (open, stat, lstat, access, pipe, fork,
// vfork, epoll_wait, ...) need no rule: they are not on the allow-list, so
// they are refused like every other.
const x32Bit = 0x40000000
