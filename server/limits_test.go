//go:build linux

package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// dialSend opens a connection and writes req on it.
func dialSend(t *testing.T, addr, req string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	return c, bufio.NewReader(c)
}

func errorOf(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	var e errorBody
	json.NewDecoder(resp.Body).Decode(&e)
	return resp, e.Error.Code
}

// Bodies reserve from the worker's budget as they arrive, never ahead:
// a body holds at most twice what its client sent plus the first step,
// whatever it declared; a new body that does not fit is refused at once
// with 503 and Retry-After, one under way after waiting for room; small
// bodies still fit beside large ones; what a body reserved returns once
// it is served or ends.
func TestBodyBudget(t *testing.T) {
	const maxBody = 1 << 20
	srv := New(Config{MaxBody: maxBody, MaxInflightBody: 2 * maxBody}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/len", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, maxBody)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		fmt.Fprintf(ctx, "%d", len(body))
	})
	addr, _ := serveTCP(t, srv)
	used := srv.conns.bodies.used.Load
	post := func(n int) string {
		return fmt.Sprintf("POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", n)
	}

	// Declaring 1 MiB and sending 9,000 bytes holds the first step, 16
	// KiB. (fasthttp runs the handler once it has 8 KiB of a body.)
	dialSend(t, addr, post(maxBody)+strings.Repeat("d", 9000))
	waitFor(t, "a stalled declaration's first step", func() bool { return used() == minBodyBuf })
	// Sending 300 KiB holds 512 KiB: the buffer doubles as bytes arrive.
	a, abr := dialSend(t, addr, post(maxBody)+strings.Repeat("a", 300<<10))
	waitFor(t, "A's reservation", func() bool { return used() == minBodyBuf+512<<10 })
	// A sends all but a byte: it holds its 1 MiB.
	io.WriteString(a, strings.Repeat("a", maxBody-300<<10-1))
	waitFor(t, "A's whole reservation", func() bool { return used() == minBodyBuf+maxBody })
	// Small bodies that stall fill the budget up to what large ones may
	// use (7/8 of it, 1,792 KiB): eleven hold 64 KiB each, one 48 KiB.
	for i := range 12 {
		n := smallBody
		if i == 11 {
			n = 48 << 10
		}
		dialSend(t, addr, post(n)+strings.Repeat("s", n-100))
	}
	waitFor(t, "the small stallers", func() bool { return used() == 2*maxBody-2*maxBody/8 })

	// A new large body does not fit its first step: 503 at once (but
	// for the 8 KiB fasthttp reads before any handler runs).
	start := time.Now()
	_, bbr := dialSend(t, addr, post(maxBody)+strings.Repeat("b", 8<<10))
	if resp, code := errorOf(t, bbr); resp.StatusCode != 503 || code != CodeOverloaded ||
		resp.Header.Get("Retry-After") == "" || !resp.Close {
		t.Errorf("a body over the budget: %d %s Retry-After=%q close=%v; want 503 overloaded, Retry-After, close",
			resp.StatusCode, code, resp.Header.Get("Retry-After"), resp.Close)
	}
	if took := time.Since(start); took > budgetWait/2 {
		t.Errorf("the refusal took %v; want it at once", took)
	}
	// With Expect: 100-continue, a client learns it before sending a byte.
	_, ebr := dialSend(t, addr, "POST /len HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1048576\r\n\r\n")
	if resp, code := errorOf(t, ebr); resp.StatusCode != 503 || code != CodeOverloaded {
		t.Errorf("Expect: 100-continue over the budget: %d %s; want 503 overloaded instead of 100 Continue", resp.StatusCode, code)
	}
	// A chunked body is small until it grows past 64 KiB; then it waits
	// for room, and is refused.
	start = time.Now()
	_, cbr := dialSend(t, addr, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"+
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 200<<10, strings.Repeat("c", 200<<10)))
	if resp, code := errorOf(t, cbr); resp.StatusCode != 503 || code != CodeOverloaded {
		t.Errorf("a chunked body outgrowing the budget: %d %s; want 503 overloaded", resp.StatusCode, code)
	}
	if took := time.Since(start); took < budgetWait*9/10 || took > 3*budgetWait {
		t.Errorf("the chunked body's refusal took %v; want it after waiting %v for room", took, budgetWait)
	}
	// A small body still fits, in the small bodies' lane.
	_, sbr := dialSend(t, addr, post(1000)+strings.Repeat("s", 1000))
	if resp := readResponse(t, sbr); resp.StatusCode != 200 {
		t.Errorf("a small body beside the stalled ones: %d; want 200", resp.StatusCode)
	}
	// A completes; its reservation returns.
	io.WriteString(a, "a")
	if resp := readResponse(t, abr); resp.StatusCode != 200 {
		t.Errorf("the stalled body, completed: %d; want 200", resp.StatusCode)
	}
	waitFor(t, "A's reservation to return", func() bool { return used() == 2*maxBody-2*maxBody/8-maxBody })
	if got := srv.conns.bodies.refused.Load(); got != 3 {
		t.Errorf("bodies_refused = %d; want 3", got)
	}
}

// A body under way that does not fit waits for room, and goes on once a
// body in flight returns its share.
func TestBodyBudgetWaitsForRoom(t *testing.T) {
	const maxBody = 1 << 20
	srv := New(Config{MaxBody: maxBody, MaxInflightBody: 2 * maxBody}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/len", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, maxBody)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		fmt.Fprintf(ctx, "%d", len(body))
	})
	addr, _ := serveTCP(t, srv)
	used := srv.conns.bodies.used.Load
	post := func(n int) string {
		return fmt.Sprintf("POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", n)
	}
	a, abr := dialSend(t, addr, post(maxBody)+strings.Repeat("a", maxBody-1))
	waitFor(t, "A's reservation", func() bool { return used() == maxBody })
	// B's last step (512 KiB more, to 1.5 MiB of 1.75) does not fit...
	_, bbr := dialSend(t, addr, post(maxBody)+strings.Repeat("b", maxBody))
	waitFor(t, "B to wait", func() bool { return srv.conns.bodies.waiters.Load() == 1 })
	// ...until A is served.
	io.WriteString(a, "a")
	for _, br := range []*bufio.Reader{abr, bbr} {
		if resp := readResponse(t, br); resp.StatusCode != 200 {
			t.Errorf("an upload: %d; want 200", resp.StatusCode)
		}
	}
	waitFor(t, "the budget to empty", func() bool { return used() == 0 })
}

// A body that sends nothing for Config.BodyIdleTimeout ends with 408, and
// returns what it held; one that keeps sending is not cut short.
func TestBodyIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	srv := New(Config{BodyIdleTimeout: idle}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/len", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, 1<<20)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		fmt.Fprintf(ctx, "%d", len(body))
	})
	addr, _ := serveTCP(t, srv)
	for _, chunked := range []bool{false, true} {
		req := "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 20000)
		if chunked {
			req = "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4e20\r\n" + strings.Repeat("x", 20000) + "\r\n"
		}
		start := time.Now()
		_, br := dialSend(t, addr, req)
		resp, code := errorOf(t, br)
		took := time.Since(start)
		if resp.StatusCode != 408 || code != CodeRequestTimeout || !resp.Close {
			t.Errorf("chunked=%v: a stalled body: %d %s close=%v; want 408 request_timeout, closed", chunked, resp.StatusCode, code, resp.Close)
		}
		if took < idle || took > idle+2*time.Second {
			t.Errorf("chunked=%v: the 408 took %v; want about %v", chunked, took, idle)
		}
	}
	waitFor(t, "the budget to empty", func() bool { return srv.conns.bodies.used.Load() == 0 })
	// A byte every 100 ms for a second: slower than the idle timeout in
	// all, never idle that long.
	c, br := dialSend(t, addr, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
	for range 10 {
		time.Sleep(100 * time.Millisecond)
		io.WriteString(c, "x")
	}
	if resp := readResponse(t, br); resp.StatusCode != 200 || resp.Close {
		t.Errorf("a slow body that never idles: %d close=%v; want 200, kept alive", resp.StatusCode, resp.Close)
	}
}

// Connections over the worker's limits are answered with the JSON error and
// closed, without reaching fasthttp; those under them are served.
func TestConnectionLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		status int
	}{
		{"max conns", Config{MaxConns: 2}, 503},
		{"per IP", Config{MaxConnsPerIP: 2}, 429},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := New(tc.cfg, slog.New(slog.DiscardHandler), 1)
			addr, _ := serveTCP(t, srv)
			const get = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
			for range 2 {
				_, br := dialSend(t, addr, get)
				if resp := readResponse(t, br); resp.StatusCode != 200 {
					t.Fatalf("a connection under the limit: %d", resp.StatusCode)
				}
			}
			_, br := dialSend(t, addr, get)
			resp, code := errorOf(t, br)
			if resp.StatusCode != tc.status || code != CodeTooManyConns || !resp.Close {
				t.Errorf("a third connection: %d %s close=%v; want %d %s, closed", resp.StatusCode, code, resp.Close, tc.status, CodeTooManyConns)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the refusal: %v; want EOF", err)
			}
		})
	}
}
