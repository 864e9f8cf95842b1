//go:build linux

package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
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

// Bodies arrive byte-exact whatever their size and framing: within the
// first buffer, across chunks into a declared length's one buffer, and
// across chunks copied whole at the end of a chunked body, pooled or not
// (past maxPooledBody); and each returns all it reserved.
func TestBodyBytesExact(t *testing.T) {
	const maxBody = 6 << 20
	srv := New(Config{MaxBody: maxBody}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/sum", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, maxBody)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		sum := sha256.Sum256(body)
		fmt.Fprintf(ctx, "%d %x", len(body), sum)
	})
	addr, _ := serveTCP(t, srv)
	client := &http.Client{Timeout: 10 * time.Second}
	for _, n := range []int{0, 1000, minBodyBuf + 1, bodyChunk, bodyChunk + 1, 3*bodyChunk + 7, maxPooledBody + 3, maxBody} {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(i*7 + i>>13)
		}
		want := fmt.Sprintf("%d %x", n, sha256.Sum256(body))
		for _, chunked := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(body)
			if chunked {
				r = io.MultiReader(r) // no length: Transfer-Encoding: chunked
			}
			resp, err := client.Post("http://"+addr+"/sum", "application/octet-stream", r)
			if err != nil {
				t.Fatalf("%d bytes, chunked=%v: %v", n, chunked, err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(got) != want {
				t.Errorf("%d bytes, chunked=%v: %d %q; want %q", n, chunked, resp.StatusCode, got, want)
			}
		}
	}
	waitFor(t, "the budget to empty", func() bool { return srv.conns.bodies.used.Load() == 0 })
}

// The pools' classes run from minBodyBuf to maxPooledBody by powers of
// two, and a buffer goes back to the pool of its capacity.
func TestBodyBufClasses(t *testing.T) {
	if got := bufClass(maxPooledBody); got != len(bodyBufs)-1 {
		t.Fatalf("bufClass(maxPooledBody) = %d; want the last of %d pools", got, len(bodyBufs))
	}
	for _, tc := range []struct{ n, cap int }{
		{0, minBodyBuf}, {1, minBodyBuf}, {minBodyBuf, minBodyBuf}, {minBodyBuf + 1, 2 * minBodyBuf},
		{40 << 10, 64 << 10}, {bodyChunk, bodyChunk}, {maxPooledBody, maxPooledBody}, {maxPooledBody + 1, maxPooledBody + 1},
	} {
		bp := getBuf(tc.n)
		if len(*bp) != 0 || cap(*bp) != tc.cap {
			t.Errorf("getBuf(%d): len %d cap %d; want 0, %d", tc.n, len(*bp), cap(*bp), tc.cap)
		}
		putBuf(bp)
	}
}

// A small body through a real connection: what Body costs per request
// beside fasthttp's own (the pooled buffers and state allocate nothing).
func BenchmarkBody64KiB(b *testing.B) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/sum", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, 1<<20)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		sum := sha256.Sum256(body)
		release()
		ctx.Write(sum[:4])
	})
	addr, _ := serveTCP(b, srv)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := append([]byte(fmt.Sprintf("POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", 64<<10)), make([]byte, 64<<10)...)
	var resp fasthttp.Response
	br := bufio.NewReader(c)
	b.SetBytes(64 << 10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if err := resp.Read(br); err != nil || resp.StatusCode() != 200 {
			b.Fatalf("%v %d", err, resp.StatusCode())
		}
	}
}
