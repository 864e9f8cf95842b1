//go:build linux && (amd64 || arm64)

package seccomp

import (
	"bytes"
	"compress/flate"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test binary is also its own child: with helperEnv set, TestMain runs
// that helper instead of the tests (before the testing package starts
// anything), the helper calls Install and then does one thing.
const (
	helperEnv    = "SECCOMP_TEST_HELPER"
	errnoEnv     = "SECCOMP_TEST_ERRNO"     // "1": Policy{Errno: EPERM}
	noInstallEnv = "SECCOMP_TEST_NOINSTALL" // "1": the helper runs without a filter
)

// Exit codes of a helper that was not killed.
const (
	exitOK          = 0
	exitInstall     = 10 // Install failed
	exitSurvived    = 11 // a refused call returned instead of killing
	exitWrongErrno  = 12 // a refused call failed, but not with EPERM
	exitSameThread  = 13 // the TSYNC helper's threads were not distinct
	exitBadWorkload = 14 // the allowed workload computed something wrong
)

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(helperMain(name))
	}
	os.Exit(m.Run())
}

// facts are what a helper reads before Install, when it still may.
type facts struct{ ppid, uid int }

// refusedActions each make one call the filter refuses. Under the kill
// policy the process dies in them; under Errno they return the error.
var refusedActions = map[string]func(f facts) error{
	"dial": func(facts) error {
		c, err := net.Dial("tcp", "127.0.0.1:1")
		if err == nil {
			c.Close()
		}
		return err
	},
	"socket-unix": func(facts) error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	},
	"open": func(facts) error {
		f, err := os.Open("/etc/hostname")
		if err == nil {
			f.Close()
		}
		return err
	},
	"stat": func(facts) error { _, err := os.Stat("/etc/hostname"); return err },
	"exec": func(facts) error { return exec.Command("/bin/true").Run() },
	"execve": func(facts) error {
		return syscall.Exec("/bin/true", []string{"true"}, nil)
	},
	"fork": func(facts) error {
		r, _, errno := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if errno == 0 && r == 0 { // the filter failed: the forked copy leaves at once
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		return errnoOrNil(errno)
	},
	"kill-parent":   func(f facts) error { return syscall.Kill(f.ppid, 0) },
	"kill-group":    func(facts) error { return syscall.Kill(0, 0) },
	"tgkill-parent": func(f facts) error { return unix.Tgkill(f.ppid, f.ppid, 0) },
	"tkill": func(facts) error {
		_, _, errno := unix.RawSyscall(unix.SYS_TKILL, uintptr(unix.Gettid()), 0, 0)
		return errnoOrNil(errno)
	},
	"getppid": func(facts) error {
		_, _, errno := unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
		return errnoOrNil(errno)
	},
	"unshare": func(facts) error { return unix.Unshare(unix.CLONE_NEWUSER) },
	"setuid":  func(f facts) error { return syscall.Setuid(f.uid) },
	"mmap-exec": func(facts) error {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err == nil {
			unix.Munmap(b)
		}
		return err
	},
	"mprotect-exec": func(facts) error {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return fmt.Errorf("mmap rw: %v (want it allowed)", err)
		}
		return unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC)
	},
	"madvise-mergeable": func(facts) error {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return fmt.Errorf("mmap rw: %v (want it allowed)", err)
		}
		return unix.Madvise(b, unix.MADV_MERGEABLE)
	},
	"prctl-dumpable": func(facts) error { return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0) },
	"futex-lock-pi": func(facts) error {
		var word uint32 // unlocked: were LOCK_PI allowed it would succeed at once
		_, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), 6|futexPrivateFlag, 0, 0, 0, 0)
		return errnoOrNil(errno)
	},
	"setrlimit": func(facts) error {
		return unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 8, Max: 8})
	},
}

func errnoOrNil(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// helpers run in the child; each returns the exit code.
var helpers = map[string]func(p Policy, f facts) int{
	"allowed": helperAllowed,
	"threads": helperThreads,
	"noop":    func(Policy, facts) int { return exitOK },
	"clone3": func(Policy, facts) int {
		_, _, errno := unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
		fmt.Printf("clone3: %v\n", errno)
		if errno != unix.ENOSYS {
			return exitWrongErrno
		}
		return exitOK
	},
	"tsync":   helperTSYNC,
	"preempt": helperPreempt,
}

func helperMain(name string) int {
	var f facts
	f.ppid, f.uid = os.Getppid(), os.Getuid()
	// A killed helper must not dump core (SIGSYS does by default).
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit core:", err)
		return exitInstall
	}
	var p Policy
	if os.Getenv(errnoEnv) == "1" {
		p.Errno = unix.EPERM
	}
	var run func(Policy, facts) int
	if act, ok := refusedActions[name]; ok {
		run = func(p Policy, f facts) int { return refuse(p, f, act) }
	} else if run, ok = helpers[name]; !ok {
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
		return 2
	}
	if name == "tsync" || os.Getenv(noInstallEnv) == "1" {
		return run(p, f) // installs itself, or runs without a filter
	}
	start := time.Now()
	attempts, err := install(p)
	took := time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return exitInstall
	}
	fmt.Fprintf(os.Stderr, "install: %d attempts, %d ns\n", attempts, took.Nanoseconds())
	return run(p, f)
}

// refuse does one refused action: under the kill policy it must not return.
func refuse(p Policy, f facts, act func(facts) error) int {
	err := act(f)
	if p.Errno == 0 {
		fmt.Fprintf(os.Stderr, "survived a refused call: %v\n", err)
		return exitSurvived
	}
	fmt.Println(err)
	if !errors.Is(err, p.Errno) {
		return exitWrongErrno
	}
	return exitOK
}

// helperAllowed is a workload like an isolate child's, all after Install:
// it allocates and frees ~200 MiB with forced GCs and a scavenge, runs
// goroutines on new locked OS threads (one exits its thread), sleeps past a
// sysmon GOMAXPROCS update, uses timers (and so the netpoller), reads random
// bytes, reads stdin to EOF, hashes and compresses it, and writes the result
// to stdout.
func helperAllowed(Policy, facts) int {
	var hoard [][]byte
	for i := 0; i < 200/16; i++ {
		b := make([]byte, 16<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i)
		}
		hoard = append(hoard, b)
		if i%4 == 3 {
			runtime.GC()
		}
	}
	hoard = nil
	runtime.GC()
	debug.FreeOSMemory()

	var wg sync.WaitGroup
	var sum atomic.Uint64
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			if i != 0 { // goroutine 0 exits locked: its thread exits too
				defer runtime.UnlockOSThread()
			}
			h := sha256.New()
			buf := make([]byte, 1<<16)
			for range 64 {
				h.Write(buf)
			}
			sum.Add(uint64(h.Sum(nil)[0]))
		}()
	}
	wg.Wait()

	fired := make(chan struct{})
	time.AfterFunc(10*time.Millisecond, func() { close(fired) })
	<-fired
	start := time.Now()
	time.Sleep(1100 * time.Millisecond) // one sysmon GOMAXPROCS update
	if time.Since(start) < time.Second {
		return exitBadWorkload
	}
	var salt [16]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return exitBadWorkload
	}

	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read stdin:", err)
		return exitBadWorkload
	}
	digest := sha256.Sum256(in)
	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, 6)
	w.Write(in)
	w.Close()
	back, err := io.ReadAll(flate.NewReader(&z))
	if err != nil || !bytes.Equal(back, in) {
		return exitBadWorkload
	}
	fmt.Printf("%s %d\n", hex.EncodeToString(digest[:]), runtime.GOMAXPROCS(0))
	return exitOK
}

// helperThreads is the lighter child for the repeated run: Install (done by
// helperMain) while the runtime's threads exist, then 32 MiB of garbage and
// a GC, a timer, four goroutines on locked threads, and stdin echoed to
// stdout.
func helperThreads(Policy, facts) int {
	var keep [][]byte
	for i := range 8 {
		keep = append(keep, make([]byte, 4<<20))
		keep[i][0] = byte(i)
	}
	keep = nil
	runtime.GC()
	time.Sleep(time.Millisecond)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			x := sha256.Sum256([]byte("thread"))
			for range 200 {
				x = sha256.Sum256(x[:])
			}
		}()
	}
	wg.Wait()
	// Through a buffer, as the isolate child does: io.Copy from one
	// *os.File to another tries copy_file_range and splice after a uname,
	// which the filter refuses.
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return exitBadWorkload
	}
	if _, err := os.Stdout.Write(in); err != nil {
		return exitBadWorkload
	}
	return exitOK
}

// helperTSYNC installs from one locked thread while a goroutine waits on
// another thread that existed before, then has that goroutine open a file.
func helperTSYNC(p Policy, _ facts) int {
	ready := make(chan int)
	do := make(chan struct{})
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		ready <- unix.Gettid()
		<-do
		f, err := os.Open("/etc/hostname")
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	other := <-ready
	runtime.LockOSThread()
	if me := unix.Gettid(); me == other {
		return exitSameThread
	}
	if _, err := install(p); err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return exitInstall
	}
	close(do)
	err := <-done
	if p.Errno == 0 {
		fmt.Fprintf(os.Stderr, "other thread survived: %v\n", err)
		return exitSurvived
	}
	fmt.Println(err)
	if !errors.Is(err, p.Errno) {
		return exitWrongErrno
	}
	return exitOK
}

// helperPreempt needs asynchronous preemption (tgkill SIGURG to its own
// thread, then rt_sigreturn): with one P, a goroutine spins in a loop with no
// call in it while the main goroutine must run again to stop it, and a GC
// must stop the world around it.
func helperPreempt(Policy, facts) int {
	runtime.GOMAXPROCS(1)
	var stop atomic.Bool
	spun := make(chan uint64)
	go func() {
		var n uint64
		for !stop.Load() {
			n++
		}
		spun <- n
	}()
	runtime.Gosched() // let the spinner take the P
	time.Sleep(50 * time.Millisecond)
	runtime.GC()
	stop.Store(true)
	n := <-spun
	fmt.Println("spun", strconv.FormatUint(n, 10))
	return exitOK
}
