package resp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/redistest"
)

var bg = context.Background()

// slack is what a loaded test machine may add to a bound.
const slack = 500 * time.Millisecond

func newClient(t *testing.T, url string, tweak func(*Options)) *Client {
	t.Helper()
	opt, err := ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if opt.Timeout == 0 {
		opt.Timeout = 2 * time.Second
	}
	if tweak != nil {
		tweak(&opt)
	}
	c := New(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func mustDo(t *testing.T, c *Client, args ...any) Value {
	t.Helper()
	v, err := c.Do(bg, args...)
	if err != nil {
		t.Fatalf("%v: %v", args[0], err)
	}
	return v
}

func TestRoundTrip(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.URL(), nil)
	if v := mustDo(t, c, "SET", "k", "hello world", "PX", 60_000); v.Kind != '+' || string(v.Str) != "OK" {
		t.Errorf("SET = %+v; want +OK", v)
	}
	if b, err := mustDo(t, c, "GET", []byte("k")).Bytes(); string(b) != "hello world" || err != nil {
		t.Errorf("GET = %q, %v", b, err)
	}
	if b, _ := mustDo(t, c, "GETRANGE", "k", 0, int64(4)).Bytes(); string(b) != "hello" {
		t.Errorf("GETRANGE k 0 4 = %q; want hello", b)
	}
	if ms, err := mustDo(t, c, "PTTL", "k").Int64(); err != nil || ms <= 55_000 || ms > 60_000 {
		t.Errorf("PTTL = %d, %v; want about 60000", ms, err)
	}
	if v := mustDo(t, c, "GET", "missing"); v.Kind != '$' || !v.Null {
		t.Errorf("GET of a missing key = %+v; want a null bulk string", v)
	}
	// Binary, and large: past the buffers and the first chunk.
	big := bytes.Repeat([]byte("\x00\r\n$*-+:\xff"), 200_000)
	mustDo(t, c, "SET", "big", big)
	if b, _ := mustDo(t, c, "GET", "big").Bytes(); !bytes.Equal(b, big) {
		t.Errorf("GET of a %d-byte binary value: %d bytes, not the same", len(big), len(b))
	}
	v := mustDo(t, c, "EVAL", "return {1, tonumber(ARGV[1]), -3, {KEYS[1]}}", 1, "key", int64(-42))
	if len(v.Array) != 4 || v.Array[1].Int != -42 || string(v.Array[3].Array[0].Str) != "key" {
		t.Errorf("EVAL = %+v", v)
	}
	if _, err := v.Int64s(); !errors.Is(err, ErrType) {
		t.Errorf("Int64s of {1, -42, -3, {key}} = %v; want ErrType", err)
	}
	v = mustDo(t, c, "EVAL", "return {1, 2, 3}", 0)
	if got, err := v.Int64s(); err != nil || len(got) != 3 || got[2] != 3 {
		t.Errorf("Int64s of EVAL return {1, 2, 3} = %v, %v", got, err)
	}
	if len(c.slots) != 1 {
		t.Errorf("%d connections open after calls one at a time; want 1", len(c.slots))
	}
}

func TestScript(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.URL(), nil)
	sc := NewScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
	// Not loaded: NOSCRIPT, then EVAL, which loads it.
	if v, err := sc.Run(bg, c, []string{"n"}, 5); err != nil || v.Int != 5 {
		t.Fatalf("Run on a server without the script = %+v, %v; want 5", v, err)
	}
	if v := mustDo(t, c, "SCRIPT", "EXISTS", sc.SHA1()); len(v.Array) != 1 || v.Array[0].Int != 1 {
		t.Errorf("SCRIPT EXISTS after Run = %+v; want [1]", v)
	}
	if v, err := c.Do(bg, "EVALSHA", sc.SHA1(), 1, "n", 1); err != nil || v.Int != 6 {
		t.Errorf("EVALSHA of the script's SHA1 = %+v, %v; want 6", v, err)
	}
	if v, err := sc.Run(bg, c, []string{"n"}, 1); err != nil || v.Int != 7 {
		t.Errorf("Run with the script loaded = %+v, %v; want 7", v, err)
	}
	// A script's own error is an *Error, not retried as EVAL.
	bad := NewScript("return redis.call('INCRBY', KEYS[1], 'x')")
	var e *Error
	if _, err := bad.Run(bg, c, []string{"n"}); !errors.As(err, &e) || e.Code() != "ERR" {
		t.Errorf("Run of a failing script = %v; want an *Error ERR", err)
	}
}

// TestErrorReply: an error reply is an *Error and the connection stays
// pooled.
func TestErrorReply(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.URL(), nil)
	mustDo(t, c, "SET", "s", "x")
	for _, args := range [][]any{{"NOSUCHCOMMAND"}, {"INCR", "s"}, {"LPUSH", "s", "x"}} {
		_, err := c.Do(bg, args...)
		e, ok := err.(*Error)
		if !ok || (e.Code() != "ERR" && e.Code() != "WRONGTYPE") || !strings.HasPrefix(err.Error(), "redis: ") {
			t.Errorf("%v = %v; want an *Error", args, err)
		}
		if len(c.idle) != 1 || len(c.slots) != 1 {
			t.Errorf("after an error reply: %d idle of %d open; want the connection pooled", len(c.idle), len(c.slots))
		}
	}
	for _, args := range [][]any{{}, {"SET", "k", 1.5}, {"SET", "k", nil}, {7, "x"}} {
		if _, err := c.Do(bg, args...); err == nil {
			t.Errorf("Do(%v): no error", args)
		}
	}
}

func TestAuth(t *testing.T) {
	const pw = "Tr0ub4dor"
	s := redistest.StartWithArgs(t, "--requirepass", pw, "--user", "alice", "on", ">alicepw", "~*", "&*", "+@all")
	c := newClient(t, "redis://:"+pw+"@"+s.Addr+"/0", nil)
	mustDo(t, c, "SET", "k", "v")
	alice := newClient(t, "redis://alice:alicepw@"+s.Addr, nil)
	if v := mustDo(t, alice, "ACL", "WHOAMI"); string(v.Str) != "alice" {
		t.Errorf("ACL WHOAMI as alice = %q", v.Str)
	}
	var e *Error
	wrong := newClient(t, "redis://:wrong"+pw+"@"+s.Addr, nil)
	if _, err := wrong.Do(bg, "GET", "k"); !errors.As(err, &e) || e.Code() != "WRONGPASS" || strings.Contains(err.Error(), pw) {
		t.Errorf("a wrong password = %v; want WRONGPASS, without the password", err)
	} else if len(wrong.slots) != 0 {
		t.Errorf("a connection refused AUTH is kept open")
	}
	none := newClient(t, "redis://"+s.Addr, nil)
	if _, err := none.Do(bg, "GET", "k"); !errors.As(err, &e) || e.Code() != "NOAUTH" {
		t.Errorf("no password = %v; want NOAUTH", err)
	}
}

func TestSelect(t *testing.T) {
	s := redistest.Start(t)
	db3 := newClient(t, "redis://"+s.Addr+"/3", nil)
	db0 := newClient(t, s.URL(), nil)
	mustDo(t, db3, "SET", "k", "in 3")
	if v := mustDo(t, db0, "GET", "k"); !v.Null {
		t.Errorf("GET in db 0 of a key set in db 3 = %q", v.Str)
	}
	if v := mustDo(t, db3, "GET", "k"); string(v.Str) != "in 3" {
		t.Errorf("GET in db 3 = %q", v.Str)
	}
	bad := newClient(t, "redis://"+s.Addr+"/99", nil)
	var e *Error
	if _, err := bad.Do(bg, "GET", "k"); !errors.As(err, &e) || !strings.Contains(err.Error(), "SELECT") {
		t.Errorf("db 99 = %v; want SELECT's error", err)
	}
}

// fake is a TCP server of a test: serve runs for each connection, the
// first numbered 0; its connections are closed when the test ends.
type fake struct {
	ln    net.Listener
	conns atomic.Int32
	mu    sync.Mutex
	open  []net.Conn
}

func startFake(t *testing.T, serve func(i int, c net.Conn, r *bufio.Reader)) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.open = append(f.open, c)
			f.mu.Unlock()
			i := int(f.conns.Add(1)) - 1
			wg.Go(func() { serve(i, c, bufio.NewReader(c)) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.open {
			c.Close()
		}
		f.mu.Unlock()
		wg.Wait()
	})
	return f
}

func (f *fake) url() string { return "redis://" + f.ln.Addr().String() }

// command reads one command as the server.
func command(r *bufio.Reader) ([]string, error) {
	rd := reader{r: r, maxBulk: 1 << 20, maxArray: 100}
	v, err := rd.read()
	if err != nil {
		return nil, err
	}
	var args []string
	for _, a := range v.Array {
		args = append(args, string(a.Str))
	}
	return args, nil
}

// hang reads commands and never answers.
func hang(_ int, c net.Conn, r *bufio.Reader) { io.Copy(io.Discard, r) }

// TestHang: a server that accepts and never answers fails the call in
// Timeout, or by the context's earlier deadline, and its connection is
// closed.
func TestHang(t *testing.T) {
	f := startFake(t, hang)
	const timeout = 100 * time.Millisecond
	c := newClient(t, f.url(), func(o *Options) { o.Timeout = timeout })
	for range 2 {
		start := time.Now()
		_, err := c.Do(bg, "GET", "k")
		if took := time.Since(start); !errors.Is(err, os.ErrDeadlineExceeded) || took < timeout || took > timeout+slack {
			t.Errorf("GET from a server that never answers = %v after %v; want a timeout in %v", err, took, timeout)
		}
	}
	if len(c.slots) != 0 {
		t.Errorf("%d connections left open after timeouts", len(c.slots))
	}
	if n := f.conns.Load(); n != 2 {
		t.Errorf("%d connections for 2 calls that timed out; want 2 (no retry)", n)
	}
	slow := newClient(t, f.url(), func(o *Options) { o.Timeout = time.Minute })
	ctx, cancel := context.WithTimeout(bg, timeout)
	defer cancel()
	start := time.Now()
	if _, err := slow.Do(ctx, "GET", "k"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > timeout+slack {
		t.Errorf("GET with a %v context and a 1 min Timeout = %v after %v", timeout, err, time.Since(start))
	}
}

// TestCancel: a context cancelled mid-call ends the call at once.
func TestCancel(t *testing.T) {
	f := startFake(t, hang)
	c := newClient(t, f.url(), func(o *Options) { o.Timeout = time.Minute })
	ctx, cancel := context.WithCancel(bg)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := c.Do(ctx, "GET", "k"); !errors.Is(err, context.Canceled) || time.Since(start) > slack {
		t.Errorf("GET cancelled after 50 ms = %v after %v; want context.Canceled at once", err, time.Since(start))
	}
	if len(c.slots) != 0 {
		t.Error("the cancelled call's connection is still open")
	}
	if _, err := c.Do(ctx, "GET", "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("GET with a cancelled context = %v", err)
	}
	// Against Redis: a cancelled BLPOP leaves the client fine.
	s := redistest.Start(t)
	rc := newClient(t, s.URL(), nil)
	ctx, cancel = context.WithCancel(bg)
	time.AfterFunc(50*time.Millisecond, cancel)
	start = time.Now()
	if _, err := rc.Do(ctx, "BLPOP", "q", 10); !errors.Is(err, context.Canceled) || time.Since(start) > slack {
		t.Errorf("BLPOP cancelled after 50 ms = %v after %v", err, time.Since(start))
	}
	mustDo(t, rc, "PING")
}

// TestHugeBulk: a reply announcing 1 GiB is refused unread, its connection
// closed, and little allocated.
func TestHugeBulk(t *testing.T) {
	closed := make(chan struct{}, 4)
	f := startFake(t, func(_ int, c net.Conn, r *bufio.Reader) {
		for {
			if _, err := command(r); err != nil {
				closed <- struct{}{}
				return
			}
			c.Write([]byte("$1073741824\r\n" + strings.Repeat("x", 1000)))
		}
	})
	c := newClient(t, f.url(), nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := c.Do(bg, "GET", "k")
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("a 1 GiB bulk string = %v; want ErrTooLarge", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("a 1 GiB bulk string header cost %d bytes", got)
	}
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Error("the connection that sent a 1 GiB header was not closed")
	}
}

// TestMalformed: a malformed reply is ErrProtocol, and closes its
// connection; the next call dials a new one.
func TestMalformed(t *testing.T) {
	for _, reply := range []string{"+OK\n", "?\r\n", ":x\r\n", "$-2\r\n", "*-5\r\n", "$3\r\nabcd\r\n",
		"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "+" + strings.Repeat("a", 70_000) + "\r\n"} {
		f := startFake(t, func(_ int, c net.Conn, r *bufio.Reader) {
			for {
				if _, err := command(r); err != nil {
					return
				}
				c.Write([]byte(reply))
			}
		})
		c := newClient(t, f.url(), nil)
		for range 2 {
			if _, err := c.Do(bg, "GET", "k"); !errors.Is(err, ErrProtocol) {
				t.Errorf("reply %.20q = %v; want ErrProtocol", reply, err)
			}
		}
		if n := f.conns.Load(); n != 2 || len(c.slots) != 0 {
			t.Errorf("reply %.20q: %d connections for 2 calls, %d left open; want 2, none", reply, n, len(c.slots))
		}
	}
}

// TestRetry: a reused connection whose server closed it before a byte of
// the reply is retried once, on a new connection; a reply cut short, or a
// timeout, is never retried.
func TestRetry(t *testing.T) {
	var commands atomic.Int32
	// Connection 0 answers once, then reads the next command and closes;
	// the others answer.
	f := startFake(t, func(i int, c net.Conn, r *bufio.Reader) {
		for n := 0; ; n++ {
			if _, err := command(r); err != nil {
				return
			}
			commands.Add(1)
			if i == 0 && n == 1 {
				c.Close()
				return
			}
			c.Write([]byte("+OK\r\n"))
		}
	})
	c := newClient(t, f.url(), nil)
	for i := range 3 {
		if _, err := c.Do(bg, "SET", "k", "v"); err != nil {
			t.Errorf("call %d: %v; want the closed connection retried", i, err)
		}
	}
	if n, cmds := f.conns.Load(), commands.Load(); n != 2 || cmds != 4 {
		t.Errorf("%d connections, %d commands; want 2 and 4", n, cmds)
	}

	// A stale connection and a server that closes every new one: two
	// tries, never three.
	commands.Store(0)
	f = startFake(t, func(i int, c net.Conn, r *bufio.Reader) {
		for n := 0; ; n++ {
			if _, err := command(r); err != nil {
				return
			}
			commands.Add(1)
			if i > 0 || n > 0 {
				c.Close()
				return
			}
			c.Write([]byte("+OK\r\n"))
		}
	})
	c = newClient(t, f.url(), nil)
	mustDo(t, c, "SET", "k", "v")
	if _, err := c.Do(bg, "SET", "k", "v"); !errors.Is(err, io.EOF) {
		t.Errorf("a call closed on twice = %v; want io.EOF", err)
	}
	if n, cmds := f.conns.Load(), commands.Load(); n != 2 || cmds != 3 {
		t.Errorf("%d connections, %d commands; want 2 and 3", n, cmds)
	}
	// A fresh connection closed is not retried either.
	if _, err := c.Do(bg, "SET", "k", "v"); err == nil {
		t.Error("a call on a new connection closed: no error")
	}
	if n := f.conns.Load(); n != 3 {
		t.Errorf("%d connections after a new one was closed; want 3 (no retry)", n)
	}

	for _, tc := range []struct {
		name  string
		reply string // the second command's, then close; "" hangs
	}{
		{"a reply cut short", "+O"},
		{"a bulk string cut short", "$10\r\nabc"},
		{"an array cut short", "*2\r\n:1\r\n"},
		{"a timeout", ""},
	} {
		commands.Store(0)
		f := startFake(t, func(i int, c net.Conn, r *bufio.Reader) {
			for n := 0; ; n++ {
				if _, err := command(r); err != nil {
					return
				}
				commands.Add(1)
				switch {
				case n == 0:
					c.Write([]byte("+OK\r\n"))
				case tc.reply == "":
					io.Copy(io.Discard, r)
					return
				default:
					c.Write([]byte(tc.reply))
					c.Close()
					return
				}
			}
		})
		c := newClient(t, f.url(), func(o *Options) { o.Timeout = 100 * time.Millisecond })
		mustDo(t, c, "SET", "k", "v")
		if _, err := c.Do(bg, "INCR", "n"); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
		if n, cmds := f.conns.Load(), commands.Load(); n != 1 || cmds != 2 {
			t.Errorf("%s: %d connections, %d commands; want 1 and 2 (no retry)", tc.name, n, cmds)
		}
	}
}

// TestStopRestart: calls fail fast while Redis is down, and the first
// call after a restart works, though every idle connection is stale.
func TestStopRestart(t *testing.T) {
	s := redistest.Start(t)
	const timeout = 200 * time.Millisecond
	c := newClient(t, s.URL(), func(o *Options) { o.Timeout = timeout; o.PoolSize = 4 })
	fill := func() { // four connections, idle
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { mustDo(t, c, "BLPOP", "q", "0.05") })
		}
		wg.Wait()
		if len(c.idle) != 4 {
			t.Fatalf("%d idle connections; want 4", len(c.idle))
		}
	}
	fill()
	s.Stop()
	for range 3 {
		start := time.Now()
		if _, err := c.Do(bg, "SET", "k", "v"); err == nil || time.Since(start) > timeout+slack {
			t.Errorf("SET with Redis stopped = %v after %v; want an error within %v", err, time.Since(start), timeout)
		}
	}
	s.Restart()
	mustDo(t, c, "SET", "k", "v")
	fill()
	s.Stop()
	s.Restart()
	for i := range 6 {
		if _, err := c.Do(bg, "GET", "k"); err != nil {
			t.Errorf("call %d after a restart, %d stale connections: %v", i, 4, err)
		}
	}
}

// TestPoolBound: at most PoolSize connections; the calls beyond wait for
// one, until their deadline.
func TestPoolBound(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.URL(), func(o *Options) { o.PoolSize = 2; o.Timeout = 5 * time.Second })
	watch := newClient(t, s.URL(), func(o *Options) { o.PoolSize = 1 })
	clients := func() int {
		v := mustDo(t, watch, "INFO", "clients")
		_, after, _ := strings.Cut(string(v.Str), "connected_clients:")
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(after, "\n", 2)[0]))
		return n
	}
	var most atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if n := int32(clients()); n > most.Load() {
				most.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	var calls sync.WaitGroup
	for range 10 {
		calls.Go(func() {
			if v, err := c.Do(bg, "BLPOP", "q", "0.05"); err != nil || !v.Null {
				t.Errorf("BLPOP with 10 calls on 2 connections = %+v, %v", v, err)
			}
		})
	}
	calls.Wait()
	close(stop)
	wg.Wait()
	if m := most.Load(); m > 3 || m < 2 {
		t.Errorf("Redis saw up to %d clients; want 3 (the pool's 2, the watcher)", m)
	}
	if len(c.slots) != 2 || len(c.idle) != 2 {
		t.Errorf("%d open, %d idle after the calls; want 2, 2", len(c.slots), len(c.idle))
	}
	// Both busy: a third call waits until its deadline, not the Timeout.
	for range 2 {
		wg.Go(func() { c.Do(bg, "BLPOP", "q", 1) })
	}
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Do(ctx, "PING"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > slack {
		t.Errorf("PING with both connections busy = %v after %v; want the context's deadline", err, time.Since(start))
	}
	wg.Wait()
}

func TestClose(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.URL(), nil)
	mustDo(t, c, "PING")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(bg, "PING"); !errors.Is(err, ErrClosed) {
		t.Errorf("PING after Close = %v; want ErrClosed", err)
	}
	if len(c.slots) != 0 {
		t.Errorf("%d connections open after Close", len(c.slots))
	}
	c.Close()
}

// TestTLS: rediss:// speaks TLS, verified against the URL's host.
func TestTLS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	srv := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	f := startFake(t, func(_ int, c net.Conn, _ *bufio.Reader) {
		tc := tls.Server(c, srv)
		r := bufio.NewReader(tc)
		for {
			args, err := command(r)
			if err != nil {
				return
			}
			tc.Write([]byte("$" + strconv.Itoa(len(args[0])) + "\r\n" + args[0] + "\r\n"))
		}
	})
	url := "rediss://" + f.ln.Addr().String()
	c := newClient(t, url, func(o *Options) { o.TLS.RootCAs = pool })
	if v := mustDo(t, c, "ECHO"); string(v.Str) != "ECHO" {
		t.Errorf("over TLS: %q", v.Str)
	}
	untrusted := newClient(t, url, nil)
	var ue x509.UnknownAuthorityError
	if _, err := untrusted.Do(bg, "ECHO"); !errors.As(err, &ue) {
		t.Errorf("a certificate of an unknown authority = %v", err)
	}
}

func BenchmarkDo(b *testing.B) {
	s := redistest.Start(b)
	opt, _ := ParseURL(s.URL())
	c := New(opt)
	defer c.Close()
	val := bytes.Repeat([]byte("v"), 1000)
	if _, err := c.Do(bg, "SET", "k", val); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if v, err := c.Do(bg, "GETRANGE", "k", 0, 4096); err != nil || len(v.Str) != 1000 {
				b.Fatal(v, err)
			}
		}
	})
}
