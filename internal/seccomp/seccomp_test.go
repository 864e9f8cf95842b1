//go:build linux && (amd64 || arm64)

package seccomp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// child is one finished helper process.
type child struct {
	name           string
	stdout, stderr string
	state          *os.ProcessState
}

// childOpts are how a helper runs; the zero value is the kill policy, no
// stdin, and this process's namespaces.
type childOpts struct {
	errno  bool // Policy{Errno: EPERM}
	stdin  []byte
	env    []string
	userns bool // new user and network namespaces, as the isolator starts children
}

// runChild runs helper name in a re-executed test binary.
func runChild(t testing.TB, name string, o childOpts) child {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+name)
	if o.errno {
		cmd.Env = append(cmd.Env, errnoEnv+"=1")
	}
	// A race build's runtime sleeps a second at exit unless told not to.
	cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Env = append(cmd.Env, o.env...)
	if o.userns {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET}
	}
	cmd.Stdin = bytes.NewReader(o.stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("helper %s: %v", name, err)
	}
	return child{name: name, stdout: out.String(), stderr: errb.String(), state: cmd.ProcessState}
}

// usernsWorks reports whether this host lets the tests start a child in new
// user and network namespaces.
func usernsWorks() bool {
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET}
	return cmd.Run() == nil
}

func (c child) killedBySIGSYS() bool {
	ws := c.state.Sys().(syscall.WaitStatus)
	return ws.Signaled() && ws.Signal() == syscall.SIGSYS
}

func (c child) String() string {
	return fmt.Sprintf("helper %s: %v; stdout %q; stderr %q", c.name, c.state, c.stdout, c.stderr)
}

// installAttempts reads the "install: N attempts" line a helper writes.
func (c child) installAttempts() int {
	var n, ns int
	for line := range strings.Lines(c.stderr) {
		if _, err := fmt.Sscanf(line, "install: %d attempts, %d ns", &n, &ns); err == nil {
			return n
		}
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestAllowedWorkload(t *testing.T) {
	in := bytes.Repeat([]byte("an isolate child's input, compressible\n"), 1<<15)
	sum := sha256.Sum256(in)
	want := hex.EncodeToString(sum[:]) + " "
	for i := range 3 {
		c := runChild(t, "allowed", childOpts{stdin: in})
		if !c.state.Success() || !strings.HasPrefix(c.stdout, want) {
			t.Fatalf("run %d: %v; want exit 0 and stdout starting %q", i, c, want)
		}
	}
}

// TestInstallManyChildren installs in many fresh processes, each with the
// runtime's threads already running and, where the host allows, in new user
// and network namespaces as the isolator makes them, to catch a rare TSYNC
// failure: it fails if Install ever gives up, and logs how often it had to
// retry.
func TestInstallManyChildren(t *testing.T) {
	n := 200
	if testing.Short() {
		n = 20
	}
	opts := childOpts{stdin: []byte("ping"), userns: usernsWorks()}
	var (
		mu       sync.Mutex
		retried  int
		failures []string
		wg       sync.WaitGroup
		jobs     = make(chan int)
	)
	for range 2 {
		wg.Go(func() {
			for i := range jobs {
				c := runChild(t, "threads", opts)
				mu.Lock()
				switch {
				case !c.state.Success() || c.stdout != "ping":
					failures = append(failures, fmt.Sprintf("child %d: %v", i, c))
				case c.installAttempts() > 1:
					retried++
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d children (new user namespace: %v): %d needed a TSYNC retry, %d failed", n, opts.userns, retried, len(failures))
	for _, f := range failures {
		t.Error(f)
	}
}

func TestRefusedCallKills(t *testing.T) {
	for _, name := range sortedKeys(refusedActions) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if c := runChild(t, name, childOpts{}); !c.killedBySIGSYS() {
				t.Errorf("%v; want killed by SIGSYS", c)
			}
		})
	}
}

func TestRefusedCallErrno(t *testing.T) {
	for _, name := range sortedKeys(refusedActions) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := runChild(t, name, childOpts{errno: true})
			if !c.state.Success() || !strings.Contains(c.stdout, "operation not permitted") {
				t.Errorf("%v; want exit 0 after an EPERM", c)
			}
		})
	}
}

func TestClone3FailsWithENOSYS(t *testing.T) {
	for _, errno := range []bool{false, true} {
		if c := runChild(t, "clone3", childOpts{errno: errno}); !c.state.Success() {
			t.Errorf("errno policy %v: %v; want exit 0 after ENOSYS", errno, c)
		}
	}
}

// TestFilterCoversOtherThreads installs from one thread and makes the
// refused call from another that existed before Install: only TSYNC can
// have put the filter there.
func TestFilterCoversOtherThreads(t *testing.T) {
	if c := runChild(t, "tsync", childOpts{}); !c.killedBySIGSYS() {
		t.Errorf("%v; want killed by SIGSYS", c)
	}
	if c := runChild(t, "tsync", childOpts{errno: true}); !c.state.Success() || !strings.Contains(c.stdout, "operation not permitted") {
		t.Errorf("errno policy: %v; want exit 0 after an EPERM", c)
	}
}

func TestPreemptionStillWorks(t *testing.T) {
	c := runChild(t, "preempt", childOpts{})
	if !c.state.Success() || !strings.HasPrefix(c.stdout, "spun ") {
		t.Errorf("%v; want exit 0 and a spin count", c)
	}
}

func TestBadErrno(t *testing.T) {
	for _, e := range []syscall.Errno{maxErrno + 1, 1 << 20} {
		if err := Install(Policy{Errno: e}); !errors.Is(err, ErrBadErrno) {
			t.Errorf("Install(Policy{Errno: %d}) = %v; want ErrBadErrno", e, err)
		}
	}
}

func TestErrorStrings(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ErrUnsupported, "seccomp: no filter for this platform"},
		{ErrThreadSync, "seccomp: could not synchronise the filter to every thread"},
		{ErrBadErrno, "seccomp: Policy.Errno out of range 1 to 4095"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("error = %q; want %q", got, tc.want)
		}
	}
}

// BenchmarkChild measures what Install adds to a child: the same child that
// does nothing, without and with Install, as CPU time (user + system, from
// the child's rusage) per child, and Install's own wall time in the child.
func BenchmarkChild(b *testing.B) {
	for _, bc := range []struct {
		name string
		env  []string
	}{
		{"without-install", []string{noInstallEnv + "=1"}},
		{"install", nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var cpu time.Duration
			var installNS, installs int
			for b.Loop() {
				c := runChild(b, "noop", childOpts{env: bc.env})
				if !c.state.Success() {
					b.Fatal(c)
				}
				cpu += c.state.UserTime() + c.state.SystemTime()
				var n, ns int
				if _, err := fmt.Sscanf(c.stderr, "install: %d attempts, %d ns", &n, &ns); err == nil {
					installNS += ns
					installs++
				}
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/child")
			if installs > 0 {
				b.ReportMetric(float64(installNS)/1e3/float64(installs), "install-µs")
			}
		})
	}
}
