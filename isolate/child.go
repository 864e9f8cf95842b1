//go:build linux

package isolate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"syscall"
	"unsafe"

	"github.com/hybrid-server/hybrid/internal/seccomp"
	"golang.org/x/sys/unix"
)

// Func is a job: it turns input into output. An error the caller should see
// is a *JobError; any other is reported as an internal error (500), its
// text only in the child's stderr, which the parent logs.
type Func func(ctx context.Context, params map[string]string, input []byte) ([]byte, error)

// childLimits are what the parent asks the child to apply to itself.
type childLimits struct {
	CPUSeconds  uint64 `json:"cpu_s"`
	NoFile      uint64 `json:"nofile"`
	MemoryBytes uint64 `json:"memory"` // the Go runtime's soft limit, under the hard one
	DataBytes   uint64 `json:"data"`   // RLIMIT_DATA, only without a memory cgroup
	Reuse       int    `json:"reuse"`  // frames to serve before exiting
	Seccomp     bool   `json:"seccomp"`
	Threads     int    `json:"threads"` // the Go runtime's thread cap (debug.SetMaxThreads)
	NProc       uint64 `json:"nproc"`   // RLIMIT_NPROC, only without a pids cgroup
}

// Serve is the whole life of an isolate child: apply the limits and the
// seccomp filter, then serve frames from stdin, running each with the job
// lookup finds, until EOF or the reuse count. It returns the exit code.
// Nothing of the input is read before the confinement is in place.
func Serve(lookup func(name string) (Func, bool)) int {
	lim, err := confine()
	if err != nil {
		fmt.Fprintf(os.Stderr, "isolate child: %v\n", err)
		return 2
	}
	in := bufio.NewReaderSize(os.Stdin, maxHeaderLine)
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	for n := 0; n < max(lim.Reuse, 1); n++ {
		h, err := readHeader(in, maxRequest)
		if errors.Is(err, io.EOF) {
			return 0 // the parent is done with us, or gone
		}
		if err == nil && h.Heap > 0 {
			hugeHeap(min(uint64(h.Heap), lim.MemoryBytes/2))
		}
		var input []byte
		if err == nil {
			input, err = mapInput(h.Size)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "isolate child: %v\n", err)
			return 2
		}
		resp, payload := serveOne(lookup, h, input)
		err = writeFrame(out, resp, payload)
		if len(input) > 0 {
			unix.Munmap(input) // the next frame's input may be shorter: no stale page stays mapped
		}
		if err != nil {
			return 2
		}
	}
	return 0
}

// mapInput maps the first size bytes of the input file (inputFD), which
// the parent wrote before it sent the header. The mapping is private and
// writable, copy on write: a job may scribble on its input as on a heap
// buffer, and nothing it writes reaches the file. Mapping instead of
// reading through the pipe saves a copy, the pipe's wake-ups and the
// heap's fresh pages: ~4.4 ms of CPU for 6.4 MB and ~0.9 ms for 1 MiB
// (bench/RESULTS.md). The pages are the parent's (charged to its memory
// cgroup, bounded by its body limit); only those the job writes are the
// child's.
func mapInput(size int) ([]byte, error) {
	if size == 0 {
		return []byte{}, nil
	}
	b, err := unix.Mmap(inputFD, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("%w: input of %d bytes: %v", errFraming, size, err)
	}
	return b, nil
}

// Probe applies a child's confinement and exits: the isolator runs it once
// at start to learn what the host enforces (exit 0: everything applied).
func Probe() int {
	if _, err := confine(); err != nil {
		fmt.Fprintf(os.Stderr, "isolate probe: %v\n", err)
		return 3
	}
	return 0
}

func confine() (childLimits, error) {
	var lim childLimits
	if err := json.Unmarshal([]byte(os.Getenv(limitsEnv)), &lim); err != nil {
		return lim, fmt.Errorf("bad %s: %v", limitsEnv, err)
	}
	if err := applyLimits(lim); err != nil {
		return lim, err
	}
	if lim.Seccomp {
		if err := seccomp.Install(seccomp.Policy{}); err != nil {
			return lim, fmt.Errorf("seccomp: %w", err)
		}
	}
	return lim, nil
}

func serveOne(lookup func(string) (Func, bool), h header, input []byte) (header, []byte) {
	run, ok := lookup(h.Job)
	if !ok {
		return header{Status: 500, Code: "internal", Message: "unknown job"}, nil
	}
	out, err := run(context.Background(), h.Params, input)
	if err != nil {
		var je *JobError
		if errors.As(err, &je) {
			return header{Status: je.Status, Code: je.Code, Message: je.Message}, nil
		}
		fmt.Fprintf(os.Stderr, "isolate child: %s: %v\n", h.Job, err)
		return header{Status: 500, Code: "internal", Message: "internal error"}, nil
	}
	return header{}, out
}

// hugeHeap asks for transparent huge pages on the heap a child is about to
// grow into. A child starts with a cold heap, and every 4 KiB page it
// touches is a page fault: an argon2id hash (19 MiB) took 10,400 faults,
// 25 of its 39 ms of CPU, against none in a worker's warm pool. The Go
// runtime maps its heap without MADV_HUGEPAGE, and with THP in "madvise"
// mode (the common default) it gets none. So the child maps heapHint of
// heap now, with one untouched allocation, marks it MADV_HUGEPAGE, and
// frees it for the job's allocations; a fault then brings 2 MiB. With THP
// "never" this does nothing but the mapping. It costs ~1 ms itself, so the
// parent asks for it (Job.Heap) only for jobs that grow a large heap.
func hugeHeap(size uint64) {
	n := int(size)
	if n < 4<<20 {
		return
	}
	b := make([]byte, n) // fresh from the OS: mapped, not touched (Go does not zero it)
	start := uintptr(unsafe.Pointer(&b[0]))
	const huge = 2 << 20
	lo, hi := (start+huge-1)&^(huge-1), (start+uintptr(n))&^(huge-1)
	if hi > lo {
		unix.Madvise(b[lo-start:hi-start], unix.MADV_HUGEPAGE)
	}
	runtime.KeepAlive(b)
	b = nil
	runtime.GC() // a tiny heap: the span goes back to the page allocator for the job
}

// applyLimits lowers this process's own limits before any input is read.
func applyLimits(lim childLimits) error {
	set := func(res int, soft, hard uint64) error {
		if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: soft, Max: hard}); err != nil {
			return fmt.Errorf("setrlimit %d: %w", res, err)
		}
		return nil
	}
	// Go ignores SIGXCPU at the soft limit; the hard limit's SIGKILL ends it.
	if lim.CPUSeconds > 0 {
		if err := set(syscall.RLIMIT_CPU, lim.CPUSeconds, lim.CPUSeconds+1); err != nil {
			return err
		}
	}
	if lim.NoFile > 0 {
		if err := set(syscall.RLIMIT_NOFILE, lim.NoFile, lim.NoFile); err != nil {
			return err
		}
	}
	// The nice value stays where the parent set it (ChildNice): with
	// RLIMIT_NICE at 0 (a process may lower its nice value down to 20 − the
	// limit) a child without CAP_SYS_NICE cannot lower it again. 0 is
	// Linux's default; lowering a limit needs no privilege.
	if err := set(unix.RLIMIT_NICE, 0, 0); err != nil {
		return err
	}
	// No file may be written (pipes are not files), and a child the filter
	// kills (SIGSYS) dumps no core.
	if err := set(syscall.RLIMIT_FSIZE, 0, 0); err != nil {
		return err
	}
	if err := set(syscall.RLIMIT_CORE, 0, 0); err != nil {
		return err
	}
	if lim.DataBytes > 0 {
		if err := set(syscall.RLIMIT_DATA, lim.DataBytes, lim.DataBytes); err != nil {
			return err
		}
	}
	if lim.NProc > 0 {
		if err := set(unix.RLIMIT_NPROC, lim.NProc, lim.NProc); err != nil {
			return err
		}
	}
	if lim.Threads > 0 {
		debug.SetMaxThreads(lim.Threads)
	}
	if lim.MemoryBytes > 0 {
		debug.SetMemoryLimit(int64(lim.MemoryBytes) * 9 / 10)
	}
	// A child that runs as root (its own user could not exec the binary)
	// keeps nothing of root's power: every capability goes, on every
	// thread. (The bounding set only limits what an execve could regain,
	// and the filter refuses execve; dropping it is one stop-the-world
	// syscall per capability, ~3 ms.)
	if os.Geteuid() == 0 {
		if err := dropCapabilities(); err != nil {
			return fmt.Errorf("dropping capabilities: %w", err)
		}
	}
	return nil
}

// dropCapabilities empties this process's capability sets on all its
// threads (capabilities are per thread). A cgo build cannot do that
// (AllThreadsSyscall refuses), and drops them on this thread only.
func dropCapabilities() error {
	all := func(trap, a1, a2, a3 uintptr) error {
		_, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3)
		if errno == syscall.ENOTSUP {
			_, _, errno = syscall.RawSyscall(trap, a1, a2, a3)
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // zero: no capability in any set
	err := all(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	return err
}
