//go:build linux

package main

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// notifyMsg is one datagram on the fake NOTIFY_SOCKET: its sender's pid
// (SCM_CREDENTIALS, which systemd reads too) and its text.
type notifyMsg struct {
	pid   int
	text  string
	at    time.Time // when the test read it
	alive bool      // the sender was running when the test read it
}

// fakeNotify is a fake systemd's notification socket: a unixgram socket
// with SO_PASSCRED, so that each message comes with its sender's pid. It
// answers BARRIER=1 as systemd does, by closing the descriptor that comes
// with it once it has read every message before it, and passes it on to
// no one.
type fakeNotify struct {
	t    *testing.T
	path string
	msgs chan notifyMsg
}

func newFakeNotify(t *testing.T) *fakeNotify {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	raw, err := sock.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	f := &fakeNotify{t: t, path: path, msgs: make(chan notifyMsg, 1024)}
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for {
			n, oobn, _, _, err := sock.ReadMsgUnix(buf, oob)
			if err != nil {
				close(f.msgs)
				return
			}
			m := notifyMsg{text: string(buf[:n]), at: time.Now()}
			var fds []int
			if cms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					if cred, err := syscall.ParseUnixCredentials(&cm); err == nil {
						m.pid = int(cred.Pid)
					}
					if rights, err := syscall.ParseUnixRights(&cm); err == nil {
						fds = append(fds, rights...)
					}
				}
			}
			m.alive = running(m.pid) // before a barrier is answered: its sender waits on it
			for _, fd := range fds {
				syscall.Close(fd)
			}
			if m.text == "BARRIER=1" {
				continue
			}
			f.msgs <- m
		}
	}()
	return f
}

// next returns the next message that starts with want, from pid (any
// sender where pid is 0), within 15 s. On the way it fails the test on any
// message other than WATCHDOG=1 from the main process; skip collects
// them (nil: none may come).
func (f *fakeNotify) next(want string, pid int, skip func(notifyMsg) bool) notifyMsg {
	f.t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case m, ok := <-f.msgs:
			if !ok {
				f.t.Fatalf("notify socket closed waiting for %q", want)
			}
			if strings.HasPrefix(m.text, want) && (pid == 0 || m.pid == pid) {
				return m
			}
			if skip == nil || !skip(m) {
				f.t.Errorf("got %q from pid %d waiting for %q from %d", m.text, m.pid, want, pid)
			}
		case <-deadline:
			f.t.Fatalf("no %q from pid %d within 15s", want, pid)
		}
	}
}

// watchdogFrom is a skip for next: WATCHDOG=1 from pid.
func watchdogFrom(pid int) func(notifyMsg) bool {
	return func(m notifyMsg) bool { return m.text == sdWatchdog && m.pid == pid }
}

const sdWatchdog = "WATCHDOG=1"

// withServicePIDs runs sc as systemd runs a service's main process: the
// variables that name the process itself (vars: LISTEN_PID, WATCHDOG_PID)
// are set by a shell that then execs in place, as systemd sets them
// between fork and exec.
func withServicePIDs(sc *exec.Cmd, vars ...string) *exec.Cmd {
	script := `exec "$0" "$@"`
	for _, v := range vars {
		script = v + "=$$ " + script
	}
	return exec.Command("/bin/sh", append([]string{"-c", script}, sc.Args...)...)
}

// A fake systemd: the datagram socket NOTIFY_SOCKET names, with the
// watchdog on for the main process (WATCHDOG_USEC, WATCHDOG_PID). The
// primary says READY=1 (with its pid as MAINPID) once its workers are
// ready, RELOADING=1 and READY=1 around a reload, and WATCHDOG=1 at half of
// WATCHDOG_USEC.
//
// An upgrade that rolls back (the new build's workers crash at start):
// RELOADING=1 and READY=1 from the old primary, which pings on, and not
// one message from the rolled-back primary. With NotifyAccess=all,
// systemd would take its STOPPING=1 for the service's and stop it all.
//
// An upgrade that succeeds, with no client connection open (so that the
// old primary's workers, and then the old primary, exit within
// milliseconds of the hand-over): RELOADING=1 from the old primary, then
// MAINPID=<new> from the old primary itself, read while it still runs
// (systemd stops a service whose main process exits, and kills the new
// primary with it), and READY=1 with MAINPID= from the new one, which alone
// pings the watchdog once the old one has exited (systemd set WATCHDOG_PID
// to the old pid); no STOPPING=1 from anyone: the service goes on.
// STOPPING=1 comes from the new primary when it drains.
func TestSystemdNotify(t *testing.T) {
	sd := newFakeNotify(t)
	faultEnv, setFault := faultFile(t)
	c := startClusterCmd(t, withServicePIDs(serveCmd(binPath, "--workers", "2"), "WATCHDOG_PID"),
		append([]string{"NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=400000"}, faultEnv...), 2)
	t.Cleanup(c.killSeen)
	old := c.cmd.Process.Pid
	ready := sd.next("READY=1", old, nil)
	if !strings.Contains(ready.text, "MAINPID="+strconv.Itoa(old)) {
		t.Errorf("first notification %q; want READY=1 with MAINPID=%d", ready.text, old)
	}
	sd.next(sdWatchdog, old, nil)
	c.signal(syscall.SIGHUP)
	if m := sd.next("RELOADING=1", old, watchdogFrom(old)); !strings.Contains(m.text, "MONOTONIC_USEC=") {
		t.Errorf("reloading notification %q; want MONOTONIC_USEC", m.text)
	}
	sd.next("READY=1", old, watchdogFrom(old))

	// The rollback. next fails on any message but the old primary's
	// pings, so on any from the rolled-back primary.
	setFault("crash")
	c.signal(syscall.SIGUSR2)
	sd.next("RELOADING=1", old, watchdogFrom(old))
	rolled := 0
	c.waitFor(30*time.Second, "the crashing build's rollback", func() bool {
		s := c.snapshotOrNil()
		if s == nil || s.Upgrading || s.LastUpgrade == nil || s.LastUpgrade.Result != procpool.UpgradeRolledBack {
			return false
		}
		rolled = s.LastUpgrade.NewPID
		return true
	})
	setFault("")
	c.waitFor(15*time.Second, "the rolled-back primary to exit", func() bool { return !running(rolled) })
	rolledExit := time.Now()
	t.Logf("upgrade rolled back: new primary %d exited", rolled)
	sd.next("READY=1", old, watchdogFrom(old))
	for pings := 0; pings < 2; { // it sent what it would before it exited
		if w := sd.next(sdWatchdog, old, nil); w.at.After(rolledExit) {
			pings++
		}
	}

	c.signal(syscall.SIGUSR2)
	sd.next("RELOADING=1", old, watchdogFrom(old))
	// Two messages name the new primary, in either order: MAINPID= from
	// the old primary, and READY=1 with MAINPID= from the new one.
	var handed, newReady *notifyMsg
	deadline := time.Now().Add(15 * time.Second)
	for handed == nil || newReady == nil {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGUSR2: MAINPID= from the old primary %v, READY=1 from the new one %v; want both within 15s", handed, newReady)
		}
		m := sd.next("", 0, nil)
		switch {
		case m.text == sdWatchdog && (m.pid == old || newReady != nil && m.pid == newReady.pid):
		case m.pid == old && strings.HasPrefix(m.text, "MAINPID=") && handed == nil:
			handed = &m
		case m.pid != old && strings.HasPrefix(m.text, "READY=1") && newReady == nil:
			newReady = &m
		default:
			t.Errorf("after SIGUSR2: %q from pid %d; want MAINPID= from the old primary %d and READY=1 from the new one", m.text, m.pid, old)
		}
	}
	newPID := newReady.pid
	if !strings.Contains(newReady.text, "MAINPID="+strconv.Itoa(newPID)) {
		t.Errorf("the new primary's %q; want READY=1 with MAINPID=%d, its pid", newReady.text, newPID)
	}
	if want := "MAINPID=" + strconv.Itoa(newPID); handed.text != want {
		t.Errorf("the old primary's %q at the hand-over; want %q", handed.text, want)
	}
	// The old primary waits for systemd to read it (BARRIER=1) before it
	// exits: it was running when this fake systemd read it.
	if !handed.alive {
		t.Errorf("the old primary's %q was read after it exited: systemd would stop the service, new primary and all", handed.text)
	}
	c.waitFor(30*time.Second, "the old primary to exit", func() bool { return !running(old) })
	exited := time.Now()
	if s := c.snapshot(); s.PrimaryPID != newPID {
		t.Errorf("after the upgrade /cluster shows primary %d; want %d, which sent MAINPID=", s.PrimaryPID, newPID)
	}
	// The new primary pings the watchdog from now on: systemd's watchdog
	// (30 s in deploy/hybrid.service) follows MAINPID.
	for {
		w := sd.next(sdWatchdog, newPID, watchdogFrom(old))
		if w.at.After(exited) {
			break
		}
	}
	c.signal0(newPID, syscall.SIGTERM)
	sd.next("STOPPING=1", newPID, watchdogFrom(newPID))
	c.waitFor(15*time.Second, "the new primary to exit", func() bool { return !running(newPID) })
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
	files := listenerFiles(t, 2)
	sc := serveCmd(binPath, "--workers", "1")
	cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, sc.Args...)...)
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), "LISTEN_FDS=2", "LISTEN_FDNAMES=foo:bar")
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), `two sockets for the cluster, \"foo\" and \"bar\"`) {
		t.Errorf("LISTEN_FDNAMES=foo:bar: exit %d (%v), output %s; want 1 naming both", code, err, out)
	}
}

// unitFile is a systemd unit file's settings by section, each key's values
// in order, as systemd.syntax(7) reads them: a list setting
// (ListenStream=) may repeat, an empty assignment resets it, a line that
// ends in a backslash goes on in the next, # and ; start comments.
type unitFile map[string]map[string][]string

func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[i])
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q: want key=value in a [section]", n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if v == "" {
				delete(u[section], k)
				continue
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u, nil
}

// last is the value of a single-valued setting: its last assignment.
func (u unitFile) last(section, key string) string {
	if vs := u[section][key]; len(vs) > 0 {
		return vs[len(vs)-1]
	}
	return ""
}

// passedSocket is one descriptor systemd passes to a service.
type passedSocket struct {
	unit   string // the socket unit
	listen string // its ListenStream= value
	name   string // its name in LISTEN_FDNAMES
}

// passedSockets derives what systemd passes to service from units (by file
// name): the sockets of each unit the service's Sockets= lists and of each
// socket unit that activates it (its Service=, or by default the service
// of its own name), one descriptor per ListenStream= line, in the order of
// the units given (systemd's own order across units is not defined). All
// descriptors of one unit carry that unit's FileDescriptorName=: "assigns a
// name to all file descriptors this socket unit encapsulates"
// (systemd.socket(5)), the last assignment winning; by default the unit's
// name. A socket unit the service lists but that would activate another
// service is an error, as systemd refuses to load it.
func passedSockets(service string, units map[string]unitFile, order []string) ([]passedSocket, error) {
	svc, ok := units[service]
	if !ok {
		return nil, fmt.Errorf("no unit %s", service)
	}
	listed := map[string]bool{}
	for _, v := range svc["Service"]["Sockets"] {
		for _, name := range strings.Fields(v) {
			if _, ok := units[name]; !ok {
				return nil, fmt.Errorf("%s: Sockets= names %s, which is not there", service, name)
			}
			listed[name] = true
		}
	}
	var out []passedSocket
	for _, name := range order {
		u := units[name]
		if !strings.HasSuffix(name, ".socket") || u == nil {
			continue
		}
		activates := u.last("Socket", "Service")
		if activates == "" {
			activates = strings.TrimSuffix(name, ".socket") + ".service"
		}
		switch {
		case activates != service && listed[name]:
			return nil, fmt.Errorf("%s: %s lists it, but it would activate %s: set Service=%s", name, service, activates, service)
		case activates != service:
			continue
		}
		for key := range u["Socket"] {
			if strings.HasPrefix(key, "Listen") && key != "ListenStream" {
				return nil, fmt.Errorf("%s: %s=: hybrid serves stream sockets only", name, key)
			}
		}
		fdName := u.last("Socket", "FileDescriptorName")
		if fdName == "" {
			fdName = name
		}
		for _, listen := range u["Socket"]["ListenStream"] {
			out = append(out, passedSocket{unit: name, listen: listen, name: fdName})
		}
	}
	return out, nil
}

// listenLike listens as a ListenStream= value asks, but on port 0 (a TCP
// address keeps its host: loopback or not matters to the admin socket),
// or, for a path, on a socket of that name in dir.
func listenLike(listen, dir string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(listen, "/"):
		return net.Listen("unix", filepath.Join(dir, filepath.Base(listen)))
	case strings.HasPrefix(listen, "@"):
		return nil, fmt.Errorf("ListenStream=%s: an abstract socket; not supported here", listen)
	}
	if _, err := strconv.Atoi(listen); err == nil {
		return net.Listen("tcp", ":0") // a port alone: every address
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("ListenStream=%s: %w", listen, err)
	}
	return net.Listen("tcp", net.JoinHostPort(host, "0"))
}

// activatedCmd is the service's ExecStart= as systemd would run it with
// the sockets passed: the binary replaced by the test's, each --config
// replaced by conf, LISTEN_PID and WATCHDOG_PID the process's own.
func activatedCmd(t *testing.T, svc unitFile, files []*os.File, conf string) *exec.Cmd {
	t.Helper()
	exec0 := svc.last("Service", "ExecStart")
	if strings.ContainsAny(exec0, `"'$%`) {
		t.Fatalf("ExecStart=%s: quotes and specifiers are not read by this test", exec0)
	}
	args := strings.Fields(strings.TrimLeft(exec0, "-@:+!"))
	if len(args) < 2 || filepath.Base(args[0]) != "hybrid" || args[1] != "serve" {
		t.Fatalf("ExecStart=%s: want hybrid serve …", exec0)
	}
	args[0] = binPath
	for i, a := range args {
		switch {
		case a == "--config" && i+1 < len(args):
			args[i+1] = conf
		case strings.HasPrefix(a, "--config="):
			args[i] = "--config=" + conf
		}
	}
	cmd := withServicePIDs(exec.Command(args[0], args[1:]...), "LISTEN_PID", "WATCHDOG_PID")
	cmd.ExtraFiles = files
	return cmd
}

// readUnits reads every systemd unit of dir, by file name.
func readUnits(t *testing.T, dir string) map[string]unitFile {
	t.Helper()
	units := map[string]unitFile{}
	for _, pattern := range []string{"*.service", "*.socket"} {
		paths, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			u, err := parseUnit(string(b))
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			units[filepath.Base(p)] = u
		}
	}
	return units
}

// The shipped units, deploy/hybrid.service and its sockets, run as systemd
// would run them: LISTEN_FDS and LISTEN_FDNAMES derived from the units
// (passedSockets), each socket on its unit's own host with port 0,
// ExecStart= as the command line with --config an empty file (as the
// install steps create it), NOTIFY_SOCKET for Type=notify and
// WATCHDOG_USEC for WatchdogSec=. The primary serves on the socket for the
// cluster and the admin endpoint on the one named admin, binds nothing,
// and says READY=1; in either order of the descriptors, which systemd does
// not define across units.
func TestSystemdUnits(t *testing.T) {
	units := readUnits(t, "../../deploy")
	svc := units["hybrid.service"]
	if svc == nil || len(units) < 2 {
		t.Fatalf("deploy/ has units %v; want hybrid.service and its sockets", slices.Sorted(maps.Keys(units)))
	}
	if typ, access := svc.last("Service", "Type"), svc.last("Service", "NotifyAccess"); typ != "notify" || access != "all" {
		t.Errorf("hybrid.service: Type=%s, NotifyAccess=%s; want notify and all (an upgrade's new primary sends MAINPID=)", typ, access)
	}
	var order []string
	for name := range units {
		order = append(order, name)
	}
	slices.Sort(order)
	for _, reversed := range []bool{false, true} {
		if reversed {
			slices.Reverse(order)
		}
		t.Run(strings.Join(order, ","), func(t *testing.T) {
			passed, err := passedSockets("hybrid.service", units, order)
			if err != nil {
				t.Fatal(err)
			}
			var files []*os.File
			var names []string
			addrs := map[string]string{}
			for _, p := range passed {
				ln, err := listenLike(p.listen, t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				f, err := ln.(interface{ File() (*os.File, error) }).File()
				if err != nil {
					t.Fatal(err)
				}
				ln.Close() // f holds the socket
				defer f.Close()
				files = append(files, f)
				names = append(names, p.name)
				addrs[p.name] = ln.Addr().String()
			}
			t.Logf("LISTEN_FDS=%d LISTEN_FDNAMES=%s", len(files), strings.Join(names, ":"))
			conf := filepath.Join(t.TempDir(), "hybrid.conf")
			if err := os.WriteFile(conf, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			env := []string{"LISTEN_FDS=" + strconv.Itoa(len(files)), "LISTEN_FDNAMES=" + strings.Join(names, ":"),
				"HYBRID_WORKERS=2"} // as an Environment= drop-in would: this box's CPUs are not the test's business
			sd := newFakeNotify(t)
			if svc.last("Service", "Type") == "notify" {
				env = append(env, "NOTIFY_SOCKET="+sd.path)
			}
			if w := svc.last("Service", "WatchdogSec"); w != "" {
				sec, err := strconv.Atoi(w)
				if err != nil {
					t.Fatalf("WatchdogSec=%s: want seconds", w)
				}
				env = append(env, fmt.Sprintf("WATCHDOG_USEC=%d", sec*1e6))
			}
			c := startClusterCmd(t, activatedCmd(t, svc, files, conf), env, 2)
			for _, f := range files {
				f.Close()
			}
			if c.admin != addrs["admin"] || c.addr == addrs["admin"] || !slices.Contains(slices.Collect(maps.Values(addrs)), c.addr) {
				t.Errorf("serving on %s, admin on %s; want the cluster on the unit's socket other than %s, and the admin on it", c.addr, c.admin, addrs["admin"])
			}
			if code, err := getJSON(freshClient(), "http://"+c.addr+"/health", nil); err != nil || code != http.StatusOK {
				t.Errorf("GET /health on the activated socket = %d, %v", code, err)
			}
			if m := sd.next("READY=1", c.cmd.Process.Pid, nil); !strings.Contains(m.text, "MAINPID="+strconv.Itoa(c.cmd.Process.Pid)) {
				t.Errorf("readiness %q; want MAINPID=%d", m.text, c.cmd.Process.Pid)
			}
		})
	}
}

// The derivation itself, on units that get it wrong: one unit with two
// FileDescriptorName= lines names both sockets after the last (the
// mistake deploy/hybrid.socket once made), and the binary started that way
// refuses to run; a unit without a name gets its own; a socket unit named
// otherwise than the service, without Service=, cannot serve it.
func TestSystemdUnitDerivation(t *testing.T) {
	svc := "[Service]\nType=notify\nExecStart=/usr/local/bin/hybrid serve\nSockets=hybrid.socket %s\n"
	for _, tc := range []struct {
		name  string
		units map[string]string
		want  string // LISTEN_FDNAMES, or the error
	}{
		{"one unit, two names", map[string]string{
			"hybrid.socket": "[Socket]\nListenStream=127.0.0.1:8080\nFileDescriptorName=http\nListenStream=127.0.0.1:8081\nFileDescriptorName=admin\n"},
			"admin:admin"},
		{"unnamed", map[string]string{
			"hybrid.socket": "[Socket]\nListenStream=127.0.0.1:8080\n"},
			"hybrid.socket"},
		{"two units", map[string]string{
			"hybrid.socket":       "[Socket]\nListenStream=127.0.0.1:8080\nFileDescriptorName=http\n",
			"hybrid-admin.socket": "[Socket]\nListenStream=127.0.0.1:8081\nFileDescriptorName=admin\nService=hybrid.service\n"},
			"admin:http"},
		{"no Service=", map[string]string{
			"hybrid.socket":       "[Socket]\nListenStream=127.0.0.1:8080\n",
			"hybrid-admin.socket": "[Socket]\nListenStream=127.0.0.1:8081\nFileDescriptorName=admin\n"},
			"would activate hybrid-admin.service"},
	} {
		units := map[string]unitFile{}
		var order, others []string
		for name, text := range tc.units {
			u, err := parseUnit(text)
			if err != nil {
				t.Fatal(err)
			}
			units[name] = u
			order = append(order, name)
			if name != "hybrid.socket" {
				others = append(others, name)
			}
		}
		slices.Sort(order)
		units["hybrid.service"], _ = parseUnit(fmt.Sprintf(svc, strings.Join(others, " ")))
		passed, err := passedSockets("hybrid.service", units, order)
		var names []string
		for _, p := range passed {
			names = append(names, p.name)
		}
		if got := strings.Join(names, ":"); err != nil && !strings.Contains(err.Error(), tc.want) || err == nil && got != tc.want {
			t.Errorf("%s: LISTEN_FDNAMES=%s, %v; want %s", tc.name, got, err, tc.want)
		}
	}

	// The binary, given what the broken unit gives it, does not start:
	// the test above would catch a unit like it.
	files := listenerFiles(t, 2)
	u, _ := parseUnit(fmt.Sprintf(svc, ""))
	cmd := activatedCmd(t, u, files, "")
	cmd.Env = append(os.Environ(), "LISTEN_FDS=2", "LISTEN_FDNAMES=admin:admin", "HYBRID_WORKERS=1")
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "two sockets named admin") {
		t.Errorf("LISTEN_FDNAMES=admin:admin: exit %d (%v), output %s; want 1, two sockets named admin", code, err, out)
	}
}

// listenerFiles opens n TCP listeners on 127.0.0.1 and returns their
// descriptors' files, as a launcher would pass them; all are closed when
// the test ends.
func listenerFiles(t *testing.T, n int) []*os.File {
	t.Helper()
	var files []*os.File
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return files
}
