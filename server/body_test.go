//go:build linux

package server

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// A streamed body is read whole by Body, bounded by the limit whatever its
// framing, and a body left unread ends its connection instead of being
// parsed as the next request.
func TestBodyStreamedAndBounded(t *testing.T) {
	srv := New(Config{MaxBody: 1 << 10}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/echo-len", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, 1<<10)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		fmt.Fprintf(ctx, "%d", len(body))
	})
	srv.Router.Handle(fasthttp.MethodPost, "/ignore", func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ignored") })
	addr, _ := serveTCP(t, srv)
	exchange := func(req string) (*bufio.Reader, string, bool) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		resp := readResponse(t, br)
		var body strings.Builder
		fmt.Fprintf(&body, "%d", resp.StatusCode)
		return br, body.String(), resp.Close
	}
	chunked := func(path string, chunks ...string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", path)
		for _, c := range chunks {
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(c), c)
		}
		b.WriteString("0\r\n\r\n")
		return b.String()
	}
	if _, st, closed := exchange(chunked("/echo-len", strings.Repeat("a", 600), strings.Repeat("b", 400))); st != "200" || closed {
		t.Errorf("chunked 1,000 bytes under a 1 KiB limit: %s close=%v; want 200, kept alive", st, closed)
	}
	if _, st, closed := exchange(chunked("/echo-len", strings.Repeat("a", 600), strings.Repeat("b", 600))); st != "413" || !closed {
		t.Errorf("chunked 1,200 bytes over a 1 KiB limit: %s close=%v; want 413 and Connection: close", st, closed)
	}
	// (fasthttp reads up to 8 KiB of a body, within the limit, before any
	// handler runs: the client sends it.)
	if _, st, closed := exchange("POST /echo-len HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n" + strings.Repeat("c", 2048)); st != "413" || !closed {
		t.Errorf("Content-Length over the limit: %s close=%v; want 413 and Connection: close", st, closed)
	}
	// A handler that does not read a body: its connection ends after the
	// response, and the body is not taken for a request.
	br, st, closed := exchange("POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" +
		"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" + strings.Repeat("x", 100-len("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")))
	if st != "200" || !closed {
		t.Errorf("a body left unread: %s close=%v; want 200 and Connection: close", st, closed)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after a body left unread: %v; want EOF, not a response to the body's bytes", err)
	}
}
