//go:build linux

package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveTCP runs srv on a loopback TCP listener: lingering and FIONREAD need
// real sockets, which the in-memory listener is not.
func serveTCP(t testing.TB, srv *Server) (addr string, shutdown func(time.Duration) error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	<-srv.Accepting()
	var stopped bool
	shutdown = func(d time.Duration) error {
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		err := srv.Shutdown(ctx)
		if serr := <-done; serr != nil {
			t.Errorf("Serve = %v; want nil after Shutdown", serr)
		}
		return err
	}
	t.Cleanup(func() {
		if !stopped {
			shutdown(2 * time.Second)
		}
	})
	return ln.Addr().String(), shutdown
}

func readResponse(t *testing.T, br *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	resp.Body.Close()
	return resp
}

// A client that writes a body far over the limit before reading reads the
// 413: the connection closes by lingering, not with RST.
func TestLingeringCloseAfterEarly413(t *testing.T) {
	srv := New(Config{MaxBody: 1 << 10}, slog.New(slog.DiscardHandler), 1)
	addr, _ := serveTCP(t, srv)
	const size = 8 << 20
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", size)
	chunk := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("write body after %d bytes: %v; want the server to read and discard it", sent, err)
		}
	}
	br := bufio.NewReader(c)
	resp := readResponse(t, br)
	if resp.StatusCode != 413 || !resp.Close {
		t.Errorf("response %s, close=%v; want 413 and Connection: close", resp.Status, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after the 413: read %d bytes, %v; want EOF (the server's write side shut down)", n, err)
	}
	c.Close()
	waitFor(t, "the lingering close to end", func() bool { return srv.conns.open() == 0 })
	if n := srv.conns.lingered.Load(); n != 1 {
		t.Errorf("lingered = %d; want 1", n)
	}
}

// A drain ends each keep-alive connection at a request boundary: the busy
// one on its next response (Connection: close), the idle one after the
// grace, both without a failed request; then Shutdown returns nil.
func TestDrainEndsKeepAliveAtRequestBoundary(t *testing.T) {
	// Long enough that a descheduled test (-race, a busy 2-core box) still
	// writes on the busy connection well within it.
	const grace = 2 * time.Second
	srv := New(Config{DrainGrace: grace}, slog.New(slog.DiscardHandler), 1)
	addr, shutdown := serveTCP(t, srv)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
	busy, busyR := dial()
	idle, idleR := dial()
	for _, cr := range []struct {
		c  net.Conn
		br *bufio.Reader
	}{{busy, busyR}, {idle, idleR}} {
		io.WriteString(cr.c, get)
		if resp := readResponse(t, cr.br); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("before the drain: %s close=%v; want 200, kept alive", resp.Status, resp.Close)
		}
	}
	idleAt := time.Now()

	drained := make(chan error, 1)
	go func() { drained <- shutdown(5 * time.Second) }()
	waitFor(t, "the drain to start", srv.draining.Load)
	time.Sleep(grace / 10)
	io.WriteString(busy, get)
	if resp := readResponse(t, busyR); resp.StatusCode != 200 || !resp.Close {
		t.Errorf("during the drain: %s close=%v; want 200 with Connection: close", resp.Status, resp.Close)
	}
	if _, err := busyR.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: %v; want EOF", err)
	}
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: %v; want EOF (closed without a response)", err)
	}
	if idleFor := time.Since(idleAt); idleFor < grace-20*time.Millisecond {
		t.Errorf("idle connection closed after %v idle; want at least the grace %v", idleFor, grace)
	}
	if err := <-drained; err != nil {
		t.Errorf("Shutdown = %v; want nil", err)
	}
	if a, i := srv.closedAfterResponse.Load(), srv.conns.closedIdle.Load(); a != 1 || i != 1 {
		t.Errorf("closed after response %d, closed idle %d; want 1 and 1", a, i)
	}
}

// A drain never ends an idle connection while a request byte waits unread
// in its socket, and a request that arrives after the drain chose to end a
// connection, before its read returned, is still read.
func TestDrainSparesUnreadRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var cs conns
	c, _ := cs.track(sc)
	defer c.Close()
	c.idleSince = time.Now().Add(-time.Hour)

	io.WriteString(client, "GET / HTTP/1.1\r\n")
	waitFor(t, "the bytes to arrive", func() bool { return c.unread() > 0 })
	cs.expireIdle(time.Now(), time.Second)
	if p := c.phase.Load(); p != phaseIdle {
		t.Fatalf("phase with unread bytes = %d; want idle (%d)", p, phaseIdle)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); n == 0 || err != nil {
		t.Fatalf("read = %d, %v", n, err)
	}
	c.idle()
	c.idleSince = time.Now().Add(-time.Hour)

	// Nothing unread: the drain ends it, and its read returns EOF...
	cs.expireIdle(time.Now(), time.Second)
	if p := c.phase.Load(); p != phaseExpired {
		t.Fatalf("phase of an idle connection = %d; want expired (%d)", p, phaseExpired)
	}
	// ...unless a request arrives before the read: then it is read.
	io.WriteString(client, "GET / HTTP/1.1\r\n")
	waitFor(t, "the bytes to arrive", func() bool { return c.unread() > 0 })
	if n, err := c.Read(buf); n == 0 || err != nil {
		t.Fatalf("read after a late request = %d, %v; want the request", n, err)
	}
	c.idle()
	c.idleSince = time.Now().Add(-time.Hour)
	cs.expireIdle(time.Now(), time.Second)
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read of an expired idle connection = %d, %v; want EOF", n, err)
	}
	if n := cs.closedIdle.Load(); n != 1 {
		t.Errorf("closed idle = %d; want 1", n)
	}
}

// Stopping the listener serves what the kernel had queued: Accept hands out
// the connections waiting in the accept queue, then reports the close.
func TestListenerStopTakesTheQueue(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{Listener: ln, s: srv, held: -1}
	const queued = 3
	for range queued {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if err := l.stop(); err != nil {
		t.Fatal(err)
	}
	for i := range queued {
		c, err := l.Accept()
		if err != nil {
			t.Fatalf("accept %d after stop: %v; want a queued connection", i, err)
		}
		c.Close()
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept once the queue is empty: %v; want net.ErrClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial after the sweep: %v; want connection refused", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// At most lingerMax connections linger at once: beyond, a connection that
// would linger closes at once, as without lingering.
func TestLingeringIsCapped(t *testing.T) {
	srv := New(Config{MaxBody: 1 << 10}, slog.New(slog.DiscardHandler), 1)
	addr, _ := serveTCP(t, srv)
	srv.conns.lingering.Store(lingerMax) // as if lingerMax others lingered
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", 1<<20)
	c.Write(make([]byte, 64<<10)) // unread bytes when the server closes
	io.Copy(io.Discard, c)        // the 413 and a reset, or (lingering) EOF after the idle bound
	waitFor(t, "the connection to close", func() bool { return srv.conns.open() == 0 })
	if n, l := srv.conns.lingered.Load(), srv.conns.lingering.Load(); n != 0 || l != lingerMax {
		t.Errorf("lingered %d, lingering %d; want 0 and the cap %d untouched", n, l, lingerMax)
	}
}
