//go:build linux

package fds

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A descriptor inherited without close-on-exec reaches an exec'd child
// until CloseOnExec marks it; it stays usable in this process.
func TestCloseOnExecStopsTheLeak(t *testing.T) {
	for _, viaProc := range []bool{false, true} {
		f, err := os.CreateTemp(t.TempDir(), "secret")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// Inherited: a copy without the flag, as a launcher leaves it.
		fd, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if leaks(t, fd, f.Name()) == false {
			t.Fatalf("fd %d without FD_CLOEXEC did not reach the child: the test cannot see a leak", fd)
		}
		if viaProc {
			err = walkProc(fd)
		} else {
			err = CloseOnExec(3)
		}
		if err != nil {
			t.Fatal(err)
		}
		if leaks(t, fd, f.Name()) {
			t.Errorf("fd %d still reaches an exec'd child after CloseOnExec (via /proc: %v)", fd, viaProc)
		}
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			t.Errorf("fd %d unusable after CloseOnExec: %v", fd, err)
		}
	}
}

// walkProc is CloseOnExec's fallback alone, for kernels without
// CLOSE_RANGE_CLOEXEC.
func walkProc(first int) error {
	old := closeRange
	closeRange = func(uint, uint, uint) error { return syscall.ENOSYS }
	defer func() { closeRange = old }()
	return CloseOnExec(first)
}

// leaks reports whether an exec'd child has fd open on path.
func leaks(t *testing.T, fd int, path string) bool {
	t.Helper()
	out, err := exec.Command("readlink", "/proc/self/fd/"+strconv.Itoa(fd)).Output()
	if err != nil {
		return false // not open in the child
	}
	return strings.TrimSpace(string(out)) == path
}
