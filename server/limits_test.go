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

// Bodies reserve from the worker's budget before they are read: a large
// body that does not fit is refused at once with 503 and Retry-After, a
// small one still fits beside stalled large ones, and what a body reserved
// returns to the budget once it is served.
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
	post := func(n int) string {
		return fmt.Sprintf("POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", n)
	}

	// A stalls with half of a 1 MiB body: 1 MiB of the 1.75 MiB that
	// large bodies may use is reserved.
	a, abr := dialSend(t, addr, post(maxBody)+strings.Repeat("a", maxBody/2))
	waitFor(t, "A's reservation", func() bool { return srv.conns.bodies.used.Load() == maxBody })
	// B's 1 MiB does not fit: 503 before its body is read (but for the
	// first 8 KiB, which fasthttp reads before any handler runs).
	start := time.Now()
	_, bbr := dialSend(t, addr, post(maxBody)+strings.Repeat("b", 8<<10))
	if resp, code := errorOf(t, bbr); resp.StatusCode != 503 || code != CodeOverloaded ||
		resp.Header.Get("Retry-After") == "" || !resp.Close {
		t.Errorf("a body over the budget: %d %s Retry-After=%q close=%v; want 503 overloaded, Retry-After, close",
			resp.StatusCode, code, resp.Header.Get("Retry-After"), resp.Close)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refusal took %v; want it at once", took)
	}
	// With Expect: 100-continue, B learns it before sending a byte.
	_, ebr := dialSend(t, addr, "POST /len HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1048576\r\n\r\n")
	if resp, code := errorOf(t, ebr); resp.StatusCode != 503 || code != CodeOverloaded {
		t.Errorf("Expect: 100-continue over the budget: %d %s; want 503 overloaded instead of 100 Continue", resp.StatusCode, code)
	}
	// A chunked body is refused once it outgrows what is left.
	_, cbr := dialSend(t, addr, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"+
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 900<<10, strings.Repeat("c", 900<<10)))
	if resp, code := errorOf(t, cbr); resp.StatusCode != 503 || code != CodeOverloaded {
		t.Errorf("a chunked body outgrowing the budget: %d %s; want 503 overloaded", resp.StatusCode, code)
	}
	// A small body fits beside the stalled one, in the small bodies' lane.
	_, sbr := dialSend(t, addr, post(1000)+strings.Repeat("s", 1000))
	if resp := readResponse(t, sbr); resp.StatusCode != 200 {
		t.Errorf("a small body beside a stalled large one: %d; want 200", resp.StatusCode)
	}
	// A completes; its reservation returns.
	io.WriteString(a, strings.Repeat("a", maxBody/2))
	if resp := readResponse(t, abr); resp.StatusCode != 200 {
		t.Errorf("the stalled body, completed: %d; want 200", resp.StatusCode)
	}
	waitFor(t, "the budget to empty", func() bool { return srv.conns.bodies.used.Load() == 0 })
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
