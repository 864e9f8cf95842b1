package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A fake systemd: the datagram socket NOTIFY_SOCKET names. The primary says
// READY=1 (with its pid as MAINPID) once its workers are ready, RELOADING=1
// and READY=1 around a reload, WATCHDOG=1 at half of WATCHDOG_USEC, and
// STOPPING=1 when it drains.
func TestSystemdNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(want string) string {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %q", want)
				}
				if strings.HasPrefix(m, want) {
					return m
				}
				if !strings.HasPrefix(m, "WATCHDOG=1") {
					t.Errorf("got %q waiting for %q", m, want)
				}
			case <-deadline:
				t.Fatalf("no %q within 15s", want)
			}
		}
	}
	c := startCluster(t, []string{"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=400000"}, 2, "--workers", "2")
	ready := next("READY=1")
	if !strings.Contains(ready, "MAINPID="+strconv.Itoa(c.cmd.Process.Pid)) {
		t.Errorf("first notification %q; want READY=1 with MAINPID=%d", ready, c.cmd.Process.Pid)
	}
	next("WATCHDOG=1")
	c.signal(syscall.SIGHUP)
	if m := next("RELOADING=1"); !strings.Contains(m, "MONOTONIC_USEC=") {
		t.Errorf("reloading notification %q; want MONOTONIC_USEC", m)
	}
	next("READY=1")
	c.signal(syscall.SIGTERM)
	next("STOPPING=1")
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// Socket activation: started with LISTEN_FDS, as systemd starts it from
// deploy/hybrid.socket, the primary serves on the sockets it was given (the
// cluster's, and the one named admin) and binds nothing.
func TestSystemdSocketActivation(t *testing.T) {
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webFile, _ := web.(*net.TCPListener).File()
	adminFile, _ := admin.(*net.TCPListener).File()
	// LISTEN_PID is the service's own pid: a shell sets it and execs in
	// place, as systemd does between fork and exec.
	sc := serveCmd(binPath, "--workers", "2")
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, sc.Args...)...)
	cmd.ExtraFiles = []*os.File{webFile, adminFile}
	c := startClusterCmd(t, cmd, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=http:admin"}, 2)
	webFile.Close()
	adminFile.Close()
	if c.addr != web.Addr().String() || c.admin != admin.Addr().String() {
		t.Errorf("serving on %s, admin %s; want systemd's %s and %s", c.addr, c.admin, web.Addr(), admin.Addr())
	}
	web.Close() // the test's copies: the primary holds its own
	admin.Close()
	client := keptAlive()
	for range 20 {
		resp, err := client.Get("http://" + c.addr + "/health")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /health on systemd's socket: %d", resp.StatusCode)
		}
	}
	// The workers got the cluster socket, not systemd's variables.
	for pid := range c.readyPIDs() {
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if strings.Contains(string(env), "LISTEN_FDS=") {
			t.Errorf("worker %d inherited LISTEN_FDS", pid)
		}
	}
}

// An admin socket systemd passed is held to --admin-addr's rule by the
// address it is bound to: on every address, not loopback, it needs a token.
func TestSystemdAdminSocketOffLoopbackNeedsToken(t *testing.T) {
	admin, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adminFile, _ := admin.(*net.TCPListener).File()
	sc := serveCmd(binPath, "--workers", "1")
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, sc.Args...)...)
	cmd.ExtraFiles = []*os.File{adminFile}
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=admin")
	out, err := cmd.CombinedOutput()
	adminFile.Close()
	if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "not on loopback") {
		t.Errorf("an admin socket on 0.0.0.0 without a token: exit %d (%v), output %s; want 2 and the refusal", code, err, out)
	}
}

// Two sockets for the cluster (LISTEN_FDNAMES=foo:bar) are named as such,
// both of them, and the primary does not start.
func TestSystemdTwoClusterSockets(t *testing.T) {
	var files []*os.File
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		f, _ := ln.(*net.TCPListener).File()
		defer f.Close()
		files = append(files, f)
	}
	sc := serveCmd(binPath, "--workers", "1")
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, sc.Args...)...)
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), "LISTEN_FDS=2", "LISTEN_FDNAMES=foo:bar")
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), `two sockets for the cluster, \"foo\" and \"bar\"`) {
		t.Errorf("LISTEN_FDNAMES=foo:bar: exit %d (%v), output %s; want 1 naming both", code, err, out)
	}
}
