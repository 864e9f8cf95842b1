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
	"runtime/debug"
	"syscall"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/server"
	"golang.org/x/sys/unix"
)

// IsChild reports whether this process is an isolate child.
func IsChild() bool { return os.Getenv(RoleEnv) == RoleIsolate }

// childLimits are what the parent asks the child to apply to itself.
type childLimits struct {
	CPUSeconds  uint64 `json:"cpu_s"`
	NoFile      uint64 `json:"nofile"`
	MemoryBytes uint64 `json:"memory"`     // GOMEMLIMIT-style soft limit for the GC
	DataBytes   uint64 `json:"data"`       // RLIMIT_DATA, only without a memory cgroup
	Reuse       int    `json:"reuse"`      // frames to serve before exiting
	TestHooks   bool   `json:"test_hooks"` // register the fault-injection workloads
}

// RunChild is the whole life of an isolate child: apply the limits, then
// serve frames from stdin until EOF or the reuse count. It returns the exit
// code.
func RunChild() int {
	var lim childLimits
	if err := json.Unmarshal([]byte(os.Getenv(limitsEnv)), &lim); err != nil {
		fmt.Fprintf(os.Stderr, "isolate child: bad %s: %v\n", limitsEnv, err)
		return 2
	}
	if err := applyLimits(lim); err != nil {
		fmt.Fprintf(os.Stderr, "isolate child: %v\n", err)
		return 2
	}
	if lim.TestHooks {
		registerFaults()
	}
	in := bufio.NewReaderSize(os.Stdin, 64<<10)
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	for n := 0; lim.Reuse <= 0 || n < max(lim.Reuse, 1); n++ {
		h, input, err := readFrame(in)
		if errors.Is(err, io.EOF) {
			return 0 // the parent is done with us, or gone
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "isolate child: %v\n", err)
			return 2
		}
		resp, payload := serve(h, input)
		if err := writeFrame(out, resp, payload); err != nil {
			return 2
		}
		if lim.Reuse <= 1 {
			return 0
		}
	}
	return 0
}

func serve(h header, input []byte) (header, []byte) {
	w, ok := handlers.Lookup(h.Workload)
	if !ok {
		return header{Status: 500, Code: server.CodeInternal, Message: "unknown workload " + h.Workload}, nil
	}
	p := handlers.Params(h.Params)
	var out []byte
	var err error
	if w.Check != nil {
		err = w.Check(p, input)
	}
	if err == nil {
		out, err = w.Run(context.Background(), p, input)
	}
	if err != nil {
		var se *server.Error
		if errors.As(err, &se) {
			return header{Status: se.Status, Code: se.Code, Message: se.Message}, nil
		}
		fmt.Fprintf(os.Stderr, "isolate child: %s: %v\n", h.Workload, err)
		return header{Status: 500, Code: server.CodeInternal, Message: "internal error"}, nil
	}
	return header{}, out
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
	// No file may be written (pipes are not files).
	if err := set(syscall.RLIMIT_FSIZE, 0, 0); err != nil {
		return err
	}
	if lim.DataBytes > 0 {
		if err := set(syscall.RLIMIT_DATA, lim.DataBytes, lim.DataBytes); err != nil {
			return err
		}
	}
	if lim.MemoryBytes > 0 {
		debug.SetMemoryLimit(int64(lim.MemoryBytes) * 9 / 10)
	}
	return nil
}
