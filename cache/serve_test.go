package cache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary be a worker process of its own, for the
// tests where a real process matters: one killed with SIGKILL mid-frame,
// one of another uid.
func TestMain(m *testing.M) {
	if h := os.Getenv("CACHE_TEST_HELPER"); h != "" {
		os.Exit(helper(h, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

func helper(name, path string) int {
	if name == "serve" { // serve a Memory in dir path until killed
		ln, _, err := Listen(path)
		if err != nil {
			fmt.Println("listen:", err)
			return 1
		}
		fmt.Println("ready")
		NewMemory(MemoryConfig{}).Serve(ln)
		return 0
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	switch name {
	case "halfput": // half of a 1 MiB put, then wait to be killed
		frame := putFrame(key(1), make([]byte, 1<<20))
		c.Write(frame[:len(frame)/2])
		fmt.Println("ready")
		select {}
	case "get": // one get: print the reply's first byte, or eof
		c.Write(append([]byte{opGet}, make([]byte, 32)...))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			fmt.Println("eof")
			return 0
		}
		fmt.Printf("reply %c\n", b[0])
		return 0
	}
	return 2
}

// helperCmd runs the test binary as helper name against the socket at path.
func helperCmd(t *testing.T, exe, name, path string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$", "--", path)
	// GORACE: a race-enabled binary otherwise sleeps 1 s as it exits.
	cmd.Env = []string{"CACHE_TEST_HELPER=" + name, "GORACE=atexit_sleep_ms=0"}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func putFrame(k Key, v []byte) []byte {
	b := append([]byte{opPut}, k[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

type server struct {
	m    *Memory
	ln   net.Listener
	path string
	done chan error
}

// startServer serves a new Memory on a socket in a new directory; the
// test's end closes the listener and waits for Serve to return.
func startServer(t *testing.T, cfg MemoryConfig) *server {
	t.Helper()
	ln, path, err := Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := &server{m: NewMemory(cfg), ln: ln, path: path, done: make(chan error, 1)}
	go func() { s.done <- s.m.Serve(ln) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *server) stop(t *testing.T) {
	t.Helper()
	s.ln.Close()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve = %v; want nil once the listener is closed", err)
		}
		s.done <- nil // for a second stop
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5 s of its listener's close")
	}
}

func newTestClient(t *testing.T, path string, cfg ClientConfig) *Client {
	t.Helper()
	c := NewClient(path, cfg)
	t.Cleanup(func() { c.Close() })
	return c
}

func dialRaw(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// expectReply reads want from c, then the end of the connection if eof.
func expectReply(t *testing.T, c net.Conn, want string, eof bool) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("reply %q, %v; want %q", got, err, want)
	}
	if eof {
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after the refusal: read %d bytes, %v; want the connection closed", n, err)
		}
	}
}

func TestClientRoundTrip(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 64 << 10})
	c := newTestClient(t, s.path, ClientConfig{MaxEntry: 64 << 10})
	val := bytes.Repeat([]byte("result "), 3000)
	if _, ok := mustGet(t, c, key(1)); ok {
		t.Fatal("Get on an empty cache hit")
	}
	mustPut(t, c, key(1), val)
	mustPut(t, c, key(2), nil)
	if v, ok := mustGet(t, c, key(1)); !ok || !bytes.Equal(v, val) {
		t.Fatalf("Get after Put = %d bytes, %v; want the %d bytes put", len(v), ok, len(val))
	}
	if v, ok := mustGet(t, c, key(2)); !ok || len(v) != 0 {
		t.Fatalf("Get of an empty value = %q, %v; want a hit, empty", v, ok)
	}
	// A value is the caller's: changing it changes nothing stored.
	v, _ := mustGet(t, c, key(1))
	v[0] = 'X'
	if v, _ := mustGet(t, c, key(1)); v[0] != 'r' {
		t.Error("changing a value Get returned changed the stored one")
	}
	if got, want := c.Stats(), (Stats{Hits: 4, Misses: 1, Puts: 2}); got != want {
		t.Errorf("client Stats = %+v; want %+v", got, want)
	}
	if st := s.m.Stats(); st.Hits != 4 || st.Misses != 1 || st.Puts != 2 || st.Errors != 0 {
		t.Errorf("server Stats = %+v; want 4 hits, 1 miss, 2 puts", st)
	}
	if n := len(c.idle); n != 1 {
		t.Errorf("%d idle connections after sequential calls; want 1 reused", n)
	}
	// The server's own counts, over the same connection.
	if st, err := c.ServerStats(context.Background()); err != nil || st != s.m.Stats() || st.Entries != 2 {
		t.Errorf("ServerStats = %+v, %v; want the server's %+v", st, err, s.m.Stats())
	}
	if n := len(c.idle); n != 1 {
		t.Errorf("%d idle connections after ServerStats; want still 1 (it uses one of its own)", n)
	}
}

func TestListenSocketMode(t *testing.T) {
	ln, path, err := Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v; want a socket, 0600", fi.Mode())
	}
	ln.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after the listener's close: %v; want it removed", err)
	}
	if _, _, err := Listen(strings.Repeat("d", 120)); err == nil {
		t.Error("Listen in a directory whose socket path is over 107 bytes succeeded")
	}
}

// TestServeBadFramesCloseOneConn sends a frame with an unknown op and a
// put whose length is 4 GiB - 1 on two connections: each is answered with
// a refusal and closed, without the server allocating the length, while a
// third connection and a Client go on being served.
func TestServeBadFramesCloseOneConn(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 64 << 10})
	c := newTestClient(t, s.path, ClientConfig{MaxEntry: 64 << 10})
	mustPut(t, c, key(1), []byte("kept"))
	bystander := dialRaw(t, s.path)

	bad := dialRaw(t, s.path)
	bad.Write([]byte("X"))
	expectReply(t, bad, "EB", true)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	huge := dialRaw(t, s.path)
	k := key(2)
	huge.Write(append(append([]byte{opPut}, k[:]...), 0xff, 0xff, 0xff, 0xff))
	expectReply(t, huge, "EL", true)
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("a 4 GiB length field allocated %d bytes; want nothing of its size", grew)
	}

	bystander.Write(append([]byte{opGet}, k[:]...))
	expectReply(t, bystander, "M", false)
	if v, ok := mustGet(t, c, key(1)); !ok || string(v) != "kept" {
		t.Errorf("Get after the bad frames = %q, %v; want the value put before", v, ok)
	}
	waitFor(t, func() bool { return s.m.Stats().Errors == 2 })
}

// TestServeCutFrame: a put cut off mid-value gives its reservation back.
func TestServeCutFrame(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 64 << 10})
	raw := dialRaw(t, s.path)
	frame := putFrame(key(1), make([]byte, 50<<10))
	raw.Write(frame[:len(frame)-1])
	waitFor(t, func() bool { return s.m.Stats().Bytes == charge(50<<10) })
	raw.Close()
	waitFor(t, func() bool { st := s.m.Stats(); return st.Errors == 1 && st.Bytes == 0 })
}

// TestServeKilledWorker kills a real worker process with SIGKILL halfway
// through a 1 MiB put: the server drops that connection and the value's
// reservation, and nothing a worker holds can block the others (there is
// no lock between processes to leave held).
func TestServeKilledWorker(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 4 << 20, MaxEntry: 2 << 20})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := helperCmd(t, exe, "halfput", s.path)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q, %v; want ready", line, err)
	}
	waitFor(t, func() bool { return s.m.Stats().Bytes == charge(1<<20) })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitFor(t, func() bool { st := s.m.Stats(); return st.Errors == 1 && st.Bytes == 0 })
	c := newTestClient(t, s.path, ClientConfig{MaxEntry: 2 << 20})
	mustPut(t, c, key(1), make([]byte, 1<<20))
	if _, ok := mustGet(t, c, key(1)); !ok {
		t.Error("Get after a worker was killed mid-put missed its own value")
	}
}

// TestServeRefusesOtherUID runs a real process as nobody against a socket
// opened to everyone: the file's mode lets it connect, and SO_PEERCRED
// must still refuse it. It needs root, to run a process as another uid.
func TestServeRefusesOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a helper as another uid")
	}
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is read on linux")
	}
	// A directory nobody can reach, holding a copy of this binary nobody
	// can run (the test binary's own directory is private).
	dir, err := os.MkdirTemp("", "cache-uid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "cache.test")
	if err := copyFile(self, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, path, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666)
	m := NewMemory(MemoryConfig{})
	done := make(chan error, 1)
	go func() { done <- m.Serve(ln) }()
	defer func() { ln.Close(); <-done }()

	run := func(cred *syscall.Credential) string {
		cmd := helperCmd(t, exe, "get", path)
		cmd.SysProcAttr.Credential = cred
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper: %v, %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(&syscall.Credential{Uid: 65534, Gid: 65534}); got != "eof" {
		t.Errorf("a peer of uid 65534 got %q; want the connection closed unanswered", got)
	}
	if got := run(nil); got != "reply M" {
		t.Errorf("a peer of our own uid got %q; want a miss", got)
	}
	if st := m.Stats(); st.Refused != 1 || st.Misses != 1 {
		t.Errorf("Stats = %+v; want 1 refused, 1 miss", st)
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}

func TestServeMaxConns(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxConns: 2})
	k := key(1)
	for range 2 {
		c := dialRaw(t, s.path)
		c.Write(append([]byte{opGet}, k[:]...))
		expectReply(t, c, "M", false)
	}
	third := dialRaw(t, s.path)
	third.Write(append([]byte{opGet}, k[:]...))
	if n, err := third.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection past MaxConns read %d bytes; want it closed", n)
	}
	if st := s.m.Stats(); st.Refused != 1 {
		t.Errorf("Refused = %d; want 1", st.Refused)
	}
}

// TestClientTimeout points a Client at a socket that accepts and never
// answers, and at one that never accepts: every call fails within its
// Timeout, with slack for a loaded machine (a bound, not a speed target).
func TestClientTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	const slack = 400 * time.Millisecond
	for _, accept := range []bool{true, false} {
		ln, path, err := Listen(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if accept {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
				}
			}()
		}
		c := newTestClient(t, path, ClientConfig{Timeout: timeout})
		for _, call := range []struct {
			name string
			f    func(context.Context) error
		}{
			{"Get", func(ctx context.Context) error { _, _, err := c.Get(ctx, key(1)); return err }},
			{"Put", func(ctx context.Context) error { return c.Put(ctx, key(1), make([]byte, 1<<20)) }},
		} {
			start := time.Now()
			err := call.f(bg)
			took := time.Since(start)
			if err == nil || took > timeout+slack {
				t.Errorf("accepting %v: %s = %v after %v; want an error within %v + %v", accept, call.name, err, took, timeout, slack)
			}
			// A context that ends first ends the call first.
			ctx, cancel := context.WithTimeout(bg, 10*time.Millisecond)
			start = time.Now()
			err = call.f(ctx)
			took = time.Since(start)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) || took > 10*time.Millisecond+slack {
				t.Errorf("accepting %v: %s with a 10 ms context = %v after %v", accept, call.name, err, took)
			}
		}
		if st := c.Stats(); st.Errors != 4 {
			t.Errorf("client Stats = %+v; want 4 errors", st)
		}
	}
}

func TestClientCancel(t *testing.T) {
	ln, path, err := Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c := newTestClient(t, path, ClientConfig{Timeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(bg)
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	_, _, err = c.Get(ctx, key(1))
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Errorf("Get canceled at 20 ms = %v after %v; want context.Canceled at once", err, time.Since(start))
	}
}

func TestClientMaxEntry(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 64 << 10})
	mustPut(t, s.m, key(1), make([]byte, 10<<10))
	mustPut(t, s.m, key(2), []byte("small"))
	c := newTestClient(t, s.path, ClientConfig{MaxEntry: 1 << 10})

	// A reply over the client's MaxEntry is an error, and its connection
	// is dropped before the value is read.
	if _, ok, err := c.Get(bg, key(1)); ok || !errors.Is(err, ErrTooLarge) {
		t.Errorf("Get of 10 KiB with MaxEntry 1 KiB = %v, %v; want ErrTooLarge", ok, err)
	}
	if len(c.idle) != 0 {
		t.Error("the connection of an oversized reply was kept")
	}
	if v, ok := mustGet(t, c, key(2)); !ok || string(v) != "small" {
		t.Errorf("Get after an oversized reply = %q, %v", v, ok)
	}
	// A Put over the client's MaxEntry is refused before it is sent.
	if err := c.Put(bg, key(3), make([]byte, 2<<10)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put of 2 KiB with MaxEntry 1 KiB = %v; want ErrTooLarge", err)
	}
	// One over the server's is refused by the server.
	big := newTestClient(t, s.path, ClientConfig{MaxEntry: 1 << 20})
	if err := big.Put(bg, key(3), make([]byte, 100<<10)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put of 100 KiB to a server of MaxEntry 64 KiB = %v; want ErrTooLarge", err)
	}
	if got, want := c.Stats(), (Stats{Hits: 1, TooLarge: 1, Errors: 1}); got != want {
		t.Errorf("client Stats = %+v; want %+v", got, want)
	}
	if st := big.Stats(); st.TooLarge != 1 || st.Errors != 0 {
		t.Errorf("big client Stats = %+v; want 1 too large", st)
	}
	if st := s.m.Stats(); st.Puts != 2 {
		t.Errorf("server Stats = %+v; want only the 2 direct puts", st)
	}
}

func TestClientFull(t *testing.T) {
	s := startServer(t, MemoryConfig{MaxBytes: 3 * charge(64<<10), MaxEntry: 64 << 10})
	c := newTestClient(t, s.path, ClientConfig{MaxEntry: 64 << 10})
	mustPut(t, c, key(1), make([]byte, 64<<10))
	// Values in flight hold more than two thirds of the bound: a third
	// value finds no room even once key(1) is evicted.
	held := 2*charge(64<<10) + 1
	if !s.m.reserve(held) {
		t.Fatal("reserve failed")
	}
	if err := c.Put(bg, key(2), make([]byte, 64<<10)); !errors.Is(err, ErrFull) {
		t.Errorf("Put with the bound held = %v; want ErrFull", err)
	}
	if _, ok := mustGet(t, c, key(2)); ok {
		t.Error("Get hit a value refused for want of room")
	}
	s.m.release(held)
	mustPut(t, c, key(2), make([]byte, 64<<10))
	if st := s.m.Stats(); st.Evictions != 1 || st.Entries != 1 || st.Errors != 1 || st.Bytes != charge(64<<10) {
		t.Errorf("Stats = %+v; want 1 eviction, 1 error, 1 entry", st)
	}
}

// TestServeCloseEndsServe closes the listener under open connections:
// Serve returns, the connections are closed, the socket file is gone, and
// a Client's next call fails (a miss to its caller) instead of hanging.
func TestServeCloseEndsServe(t *testing.T) {
	s := startServer(t, MemoryConfig{})
	c := newTestClient(t, s.path, ClientConfig{})
	mustPut(t, c, key(1), []byte("v"))
	idle := dialRaw(t, s.path)
	s.stop(t)
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Errorf("an open connection read %d bytes after Serve returned; want it closed", n)
	}
	if _, err := os.Stat(s.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after the listener's close: %v; want it removed", err)
	}
	if _, ok, err := c.Get(bg, key(1)); ok || err == nil {
		t.Errorf("Get from a closed server = %v, %v; want an error", ok, err)
	}
}

// TestClientRetriesStaleConn restarts the server under a Client holding
// idle connections: the next call finds them closed and succeeds on a new
// one, not an error.
func TestClientRetriesStaleConn(t *testing.T) {
	dir := t.TempDir()
	serve := func(m *Memory) (net.Listener, chan error) {
		ln, _, err := Listen(dir)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- m.Serve(ln) }()
		return ln, done
	}
	m := NewMemory(MemoryConfig{})
	ln, done := serve(m)
	c := newTestClient(t, filepath.Join(dir, SocketName), ClientConfig{})
	mustPut(t, c, key(1), []byte("v"))
	ln.Close()
	<-done
	ln, done = serve(m)
	defer func() { ln.Close(); <-done }()
	if v, ok := mustGet(t, c, key(1)); !ok || string(v) != "v" {
		t.Errorf("Get after a server restart = %q, %v; want the value", v, ok)
	}
	if st := c.Stats(); st.Errors != 0 {
		t.Errorf("client Stats = %+v; want no errors", st)
	}
}

func TestClientClosed(t *testing.T) {
	s := startServer(t, MemoryConfig{})
	c := NewClient(s.path, ClientConfig{})
	mustPut(t, c, key(1), []byte("v"))
	c.Close()
	if _, _, err := c.Get(bg, key(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v; want ErrClosed", err)
	}
}

// fakeConn feeds serveFrames a byte string and collects its replies.
type fakeConn struct {
	r   io.Reader
	out bytes.Buffer
}

func (c *fakeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *fakeConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *fakeConn) SetDeadline(time.Time) error { return nil }

func FuzzServeFrames(f *testing.F) {
	k := key(1)
	f.Add(append([]byte{opGet}, k[:]...))
	f.Add(putFrame(k, []byte("value")))
	f.Add(append(putFrame(k, []byte("value")), append([]byte{opGet}, k[:]...)...))
	f.Add([]byte("X"))
	f.Add(append(append([]byte{opPut}, k[:]...), 0xff, 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := NewMemory(MemoryConfig{MaxBytes: 4 * charge(256), MaxEntry: 256})
		c := &fakeConn{r: bytes.NewReader(in)}
		m.serveFrames(c)
		st := m.Stats()
		if st.Bytes > 4*charge(256) || m.reserved != 0 {
			t.Fatalf("after %q: bytes %d, reserved %d", in, st.Bytes, m.reserved)
		}
		// Every reply is well-formed.
		out := c.out.Bytes()
		for len(out) > 0 {
			switch out[0] {
			case repMiss, repStored:
				out = out[1:]
			case repError:
				if len(out) < 2 {
					t.Fatalf("a truncated refusal in %q", c.out.Bytes())
				}
				out = out[2:]
			case repHit:
				if len(out) < 5 || len(out) < 5+int(binary.BigEndian.Uint32(out[1:5])) {
					t.Fatalf("a truncated hit in %q", c.out.Bytes())
				}
				out = out[5+int(binary.BigEndian.Uint32(out[1:5])):]
			default:
				t.Fatalf("reply byte %q in %q", out[0], c.out.Bytes())
			}
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
