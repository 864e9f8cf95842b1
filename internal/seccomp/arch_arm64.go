//go:build linux

package seccomp

import "golang.org/x/sys/unix"

// auditArch is the seccomp_data.arch of this build's system calls. A call
// made through another ABI (AArch32 compat) carries another value and is
// killed.
const auditArch = unix.AUDIT_ARCH_AARCH64

// x32Bit is 0: arm64 has no x32-like ABI under the same arch value.
const x32Bit = 0
