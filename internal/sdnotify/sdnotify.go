// Package sdnotify speaks the two systemd protocols a service needs, without
// linking libsystemd: readiness notification (sd_notify(3): READY=1,
// RELOADING=1, STOPPING=1, MAINPID=, WATCHDOG=1 and BARRIER=1 over the
// datagram socket named by $NOTIFY_SOCKET) and socket activation (sd_listen_fds(3): the
// descriptors from 3 on that $LISTEN_PID and $LISTEN_FDS describe).
//
// Both are no-ops where systemd is not the parent: Notify returns nil when
// $NOTIFY_SOCKET is unset, and Listeners returns nothing when $LISTEN_PID
// names another process. That is how a service runs the same under systemd,
// in a container and from a shell.
package sdnotify

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The states of sd_notify(3) that hybrid sends.
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
	Watchdog  = "WATCHDOG=1"
)

// MainPID is the state that names the service's main process, sent in a
// binary upgrade by the old primary before it exits, and by the new one
// once it serves (with NotifyAccess=all in the unit, so systemd accepts it
// from a process that is not the main one).
func MainPID(pid int) string { return "MAINPID=" + strconv.Itoa(pid) }

// Status is a free-form status line that systemctl status shows.
func Status(s string) string { return "STATUS=" + strings.ReplaceAll(s, "\n", " ") }

// Notify sends states, newline-separated, in one datagram to
// $NOTIFY_SOCKET. It returns nil, doing nothing, when the variable is unset.
// A name starting with '@' is an abstract socket, as systemd documents.
// With RELOADING=1 it adds MONOTONIC_USEC, which Type=notify-reload needs.
func Notify(states ...string) error {
	if len(states) == 0 {
		return nil
	}
	msg := strings.Join(states, "\n")
	for _, s := range states {
		if s == Reloading {
			msg += "\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10)
		}
	}
	return send([]byte(msg), nil)
}

// Barrier waits, up to timeout, until systemd has processed every
// notification this process sent before it (sd_notify_barrier(3)): it
// sends BARRIER=1 with the write end of a pipe, which systemd closes once
// it has read the messages before it; the read end then sees EOF. A
// process that tells systemd of another main process (MAINPID=) and then
// exits calls it in between, so that its exit cannot be taken for the
// main process's. It returns nil, doing nothing, when $NOTIFY_SOCKET is
// unset, and an error wrapping os.ErrDeadlineExceeded past timeout (a
// systemd older than 246 closes the descriptor without a word, so that
// only a notification socket that keeps it times out).
func Barrier(timeout time.Duration) error {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("sdnotify: barrier: %w", err)
	}
	defer r.Close()
	err = send([]byte("BARRIER=1"), unix.UnixRights(int(w.Fd())))
	w.Close() // systemd's copy is the only write end left
	if err != nil {
		return err
	}
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("sdnotify: barrier: %w", err)
	}
	var b [1]byte
	if _, err := r.Read(b[:]); err != io.EOF {
		return fmt.Errorf("sdnotify: barrier: systemd did not close the descriptor: %w", err)
	}
	return nil
}

// send writes msg, with the control message oob, to $NOTIFY_SOCKET.
func send(msg, oob []byte) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	} else if path[0] != '/' {
		return fmt.Errorf("sdnotify: NOTIFY_SOCKET=%q: want an absolute path or an abstract name", path)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if len(oob) == 0 {
		if _, err := conn.Write(msg); err != nil {
			return fmt.Errorf("sdnotify: %w", err)
		}
		return nil
	}
	// WriteMsgUnix refuses a connected socket without an address.
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	var serr error
	if err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), msg, oob, nil, 0)
		return serr != unix.EAGAIN
	}); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("sdnotify: %w", serr)
	}
	return nil
}

// monotonicUsec is CLOCK_MONOTONIC in µs, the clock systemd compares.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1e3
}

// WatchdogInterval is how often to send WATCHDOG=1: half of
// $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, when the watchdog is
// on for this process ($WATCHDOG_PID unset or ours); 0 when it is off.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// TakeWatchdog makes the service's watchdog this process's, once this
// process is the service's main process in place of from: after a binary
// upgrade, the new primary has told systemd MAINPID=<its pid>, and systemd
// now wants the pings from it. systemd set $WATCHDOG_PID to the main
// process it started, which a process started by it inherits as it is;
// when $WATCHDOG_PID names from, TakeWatchdog sets it to this process, so
// that a process this one starts in turn (the next upgrade's) finds its
// own parent there. It returns WatchdogInterval: 0 when the watchdog is off
// or another process's.
func TakeWatchdog(from int) time.Duration {
	if from > 0 && os.Getenv("WATCHDOG_PID") == strconv.Itoa(from) {
		os.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	}
	return WatchdogInterval()
}

// listenFDsStart is SD_LISTEN_FDS_START: passed descriptors begin at 3.
const listenFDsStart = 3

// Listeners returns the listening sockets systemd passed to this process
// (socket activation), with their names from $LISTEN_FDNAMES ("" where
// unnamed), and unsets the variables so that no child takes them for its
// own. It returns nothing when $LISTEN_PID is not this process.
//
// It must run before anything opens a descriptor, since the passed ones
// start at 3; each is marked close-on-exec, as every inherited descriptor
// is in hybrid.
func Listeners() ([]*os.File, []string, error) {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil, nil
	}
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 0 || n > 64 {
		return nil, nil, errors.New("sdnotify: LISTEN_FDS is not a small count")
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	files := make([]*os.File, 0, n)
	var fdNames []string
	for i := range n {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := ""
		if i < len(names) {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), "systemd:"+name))
		fdNames = append(fdNames, name)
	}
	return files, fdNames, nil
}
