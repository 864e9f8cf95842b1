package sdnotify

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A fake systemd: a unixgram socket that NOTIFY_SOCKET names.
func TestNotifySendsOneDatagram(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	if err := Notify(Ready, MainPID(42), Status("serving\non :8080")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf[:n]), "READY=1\nMAINPID=42\nSTATUS=serving on :8080"; got != want {
		t.Errorf("datagram %q; want %q", got, want)
	}
	if err := Notify(Reloading); err != nil {
		t.Fatal(err)
	}
	n, _ = conn.Read(buf)
	if got := string(buf[:n]); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("reloading datagram %q; want RELOADING=1 with MONOTONIC_USEC", got)
	}
}

func TestNotifyWithoutSystemdDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify(Ready); err != nil {
		t.Errorf("Notify without NOTIFY_SOCKET = %v; want nil", err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative/path")
	if err := Notify(Ready); err == nil {
		t.Error("a relative NOTIFY_SOCKET was accepted")
	}
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	if d := WatchdogInterval(); d != 0 {
		t.Errorf("no WATCHDOG_USEC: %v; want 0", d)
	}
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d := WatchdogInterval(); d != 5*time.Second {
		t.Errorf("10 s watchdog: ping every %v; want 5s", d)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if d := WatchdogInterval(); d != 0 {
		t.Errorf("another process's watchdog: %v; want 0", d)
	}
}

// After an upgrade the new primary (this process) takes the watchdog of
// the old main process it replaced, and of no other.
func TestTakeWatchdog(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	t.Setenv("WATCHDOG_USEC", "10000000")
	t.Setenv("WATCHDOG_PID", "77")
	if d := TakeWatchdog(78); d != 0 || os.Getenv("WATCHDOG_PID") != "77" {
		t.Errorf("TakeWatchdog(78) with WATCHDOG_PID=77: %v, WATCHDOG_PID=%s; want 0 and 77 unchanged", d, os.Getenv("WATCHDOG_PID"))
	}
	if d := TakeWatchdog(77); d != 5*time.Second || os.Getenv("WATCHDOG_PID") != self {
		t.Errorf("TakeWatchdog(77) with WATCHDOG_PID=77: %v, WATCHDOG_PID=%s; want 5s and %s", d, os.Getenv("WATCHDOG_PID"), self)
	}
	t.Setenv("WATCHDOG_USEC", "")
	t.Setenv("WATCHDOG_PID", "77")
	if d := TakeWatchdog(77); d != 0 {
		t.Errorf("TakeWatchdog without WATCHDOG_USEC: %v; want 0", d)
	}
}

// Socket activation: descriptors from 3 on, named, for this pid only.
func TestListenersTakesPassedSockets(t *testing.T) {
	if os.Getenv("SDNOTIFY_CHILD") == "1" {
		files, names, err := Listeners()
		if err != nil || len(files) != 1 || names[0] != "web" {
			os.Exit(3)
		}
		ln, err := net.FileListener(files[0])
		if err != nil {
			os.Exit(4)
		}
		if os.Getenv("LISTEN_FDS") != "" {
			os.Exit(5) // not unset: a child would take them too
		}
		c, err := ln.Accept()
		if err != nil {
			os.Exit(6)
		}
		c.Write([]byte("ok"))
		c.Close()
		os.Exit(0)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := ln.(*net.TCPListener).File()
	exe, _ := os.Executable()
	// LISTEN_PID must be the child's own pid: a shell wrapper sets it, as
	// systemd does after fork, then execs the test binary.
	cmd := execWithListenPID(exe, f)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
		t.Errorf("read from the activated listener: %q, %v", buf, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v", err)
	}
}

// execWithListenPID runs exe as systemd would start a socket-activated
// service: f at descriptor 3, LISTEN_FDS=1 and LISTEN_PID set to the new
// process's own pid (by the shell, which then execs in place).
func execWithListenPID(exe string, f *os.File) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run=TestListenersTakesPassedSockets`, exe)
	cmd.Env = append(os.Environ(), "SDNOTIFY_CHILD=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=web")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	return cmd
}

// BARRIER=1 comes with a descriptor: Barrier returns once the receiver
// (systemd) has closed it, and times out while the receiver keeps it.
func TestBarrier(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	kept := make(chan []int, 2)
	go func() {
		buf, oob := make([]byte, 512), make([]byte, 512)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var fds []int
			if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					if rights, err := unix.ParseUnixRights(&cm); err == nil {
						fds = append(fds, rights...)
					}
				}
			}
			if string(buf[:n]) != "BARRIER=1" || len(fds) != 1 {
				t.Errorf("datagram %q with %d descriptors; want BARRIER=1 with one", buf[:n], len(fds))
			}
			kept <- fds
		}
	}()
	done := make(chan error, 1)
	go func() { done <- Barrier(5 * time.Second) }()
	var fds []int
	select {
	case fds = <-kept:
	case err := <-done:
		t.Fatalf("Barrier returned (%v) and sent nothing", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Barrier returned (%v) before the receiver closed the descriptor", err)
	case <-time.After(100 * time.Millisecond):
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if err := <-done; err != nil {
		t.Errorf("Barrier after the close = %v; want nil", err)
	}

	if err := Barrier(50 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Barrier while the receiver keeps the descriptor = %v; want a timeout", err)
	}
	select {
	case fds := <-kept:
		for _, fd := range fds {
			unix.Close(fd)
		}
	case <-time.After(5 * time.Second):
		t.Error("no second BARRIER=1")
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Barrier(time.Second); err != nil {
		t.Errorf("Barrier without NOTIFY_SOCKET = %v; want nil", err)
	}
}
