//go:build linux && (amd64 || arm64) && cgo

package seccomp

import "golang.org/x/sys/unix"

// cgoRules are the extra calls of a cgo build (the tests, the race build):
// there the runtime makes its threads with glibc's pthread_create, which
// tries clone3 (ENOSYS, see the filter), falls back to clone with
// CLONE_THREAD, and in the new thread registers rseq and its robust futex
// list; its malloc (x_cgo_thread_start) may grow the heap with brk. The
// shipped binary is static (CGO_ENABLED=0) and has none of these. The race
// detector's runtime (a cgo build) needs nothing more: its shadow mappings
// use mmap and madvise within the rules (measured with strace on the race
// build of this package's tests).
func cgoRules() []rule {
	return []rule{
		always(unix.SYS_RSEQ),
		always(unix.SYS_SET_ROBUST_LIST),
		always(unix.SYS_BRK),
	}
}
