//go:build linux

package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// Messages are bounded whatever a caller puts in them, and Quote names a
// client's value short and escaped.
func TestErrorMessagesAreBounded(t *testing.T) {
	ctx := &fasthttp.RequestCtx{}
	WriteError(ctx, Errorf(400, CodeBadParam, "bad %s", strings.Repeat("é", 1000)))
	var e errorBody
	if err := json.Unmarshal(ctx.Response.Body(), &e); err != nil {
		t.Fatal(err)
	}
	if m := e.Error.Message; len(m) > MaxMessage+len("…") || !strings.HasSuffix(m, "…") || !utf8.ValidString(m) {
		t.Errorf("a 2,000-byte message written as %d bytes %.40q…; want at most %d, cut on a rune and marked", len(m), m, MaxMessage)
	}
	for _, c := range []struct{ in, want string }{
		{"sha256", `"sha256"`},
		{"a\nb\x00", `"a\nb\x00"`},
		{strings.Repeat("x", 100), `"` + strings.Repeat("x", 40) + `…"`},
	} {
		if got := Quote(c.in); got != c.want {
			t.Errorf("Quote(%.50q) = %s; want %s", c.in, got, c.want)
		}
	}
}

// fasthttp's transport errors quote the request; the answers do not.
func TestTransportErrorsDoNotEcho(t *testing.T) {
	marker := strings.Repeat("MARKER", 20)
	for _, err := range []error{
		fmt.Errorf("cannot parse request line %q", marker),
		fmt.Errorf("invalid header value %q", marker),
		fasthttp.ErrUnsupportedTransferEncoding,
		errors.New(marker),
	} {
		e := transportError(err, 1<<20)
		if e.Status != 400 || e.Code != CodeBadRequest || strings.Contains(e.Message, "MARKER") {
			t.Errorf("transportError(%.40v…) = %v; want a 400 bad_request with a fixed message", err, e)
		}
	}
}

// The router refuses, before routing, a path whose meaning changes when
// decoded, and a repeated query key; plain paths route as before.
func TestRouterRefusesAmbiguousTargets(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	srv.Router.HandlePrefix(fasthttp.MethodGet, "/v1/hash/", func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("hash") })
	addr, _ := serveTCP(t, srv)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	// get sends the target as it is: Go's and fasthttp's clients would
	// clean it first. The connection is kept alive throughout.
	get := func(target string) (int, []byte) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", target)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.Close {
			t.Fatalf("GET %s: %d %s closed the connection", target, resp.StatusCode, body)
		}
		return resp.StatusCode, body
	}
	for _, tc := range []struct {
		target string
		status int
		code   string
	}{
		{"/health", 200, ""},
		{"/ready", 200, ""},
		{"/v1/hash/sha256", 200, ""},
		{"/v1/hash/sha256?encoding=hex&x=1", 200, ""},
		{"/v1//hash/sha256", 200, ""}, // merged slashes climb out of nothing
		{"/v1/hash/sha%32%35%36", 200, ""},
		{"/v1/hash/sha256%2F..%2F..%2Fhealth", 400, CodeBadRequest},
		{"/v1/hash/sha256%2f..%2f..%2fhealth", 400, CodeBadRequest},
		{"/v1/hash/sha256%5C..%5C..%5Chealth", 400, CodeBadRequest},
		{"/v1/hash/../../health", 400, CodeBadRequest},
		{"/v1/hash/%2e%2E/%2e./health", 400, CodeBadRequest},
		{"/v1/hash/./sha256", 400, CodeBadRequest},
		{"/v1/hash/sha256/..", 400, CodeBadRequest},
		{"/v1/hash/...", 200, ""},
		{"/v1/hash/sha256?encoding=hex&encoding=base64", 400, CodeBadParam},
		{"/v1/hash/sha256?a&%61", 400, CodeBadParam},
		{"/v1/hash/sha256?" + manyArgs(maxQueryArgs+1), 400, CodeBadParam},
		{"/v1/hash/sha256?" + manyArgs(maxQueryArgs), 200, ""},
	} {
		status, body := get(tc.target)
		if status != tc.status || (tc.code != "" && errorCode(t, body) != tc.code) {
			t.Errorf("GET %s = %d %s; want %d %s", tc.target, status, body, tc.status, tc.code)
		}
	}
	status, body := get("/v1/hash/x?" + strings.Repeat("a", 300) + "=1&" + strings.Repeat("a", 300) + "=2")
	if status != 400 || len(body) > 200 {
		t.Errorf("a repeated 300-byte key: %d, %d-byte body; want 400 naming the key cut short", status, len(body))
	}
}

// A request framed two ways, with a transfer coding other than chunked,
// or with a folded header line is refused, and its connection closed after
// the answer, kept alive or not: nothing after it is read as a request.
func TestFramingIsRefused(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	srv.Router.Handle(fasthttp.MethodPost, "/echo", func(ctx *fasthttp.RequestCtx) {
		body, release, err := Body(ctx, 1<<20)
		if err != nil {
			WriteError(ctx, err)
			return
		}
		defer release()
		ctx.SetBody(body)
	})
	addr, _ := serveTCP(t, srv)
	const chunkedBody = "5\r\nhello\r\n0\r\n\r\n"
	const next = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n" // what a proxy might take for the next request
	for _, tc := range []struct {
		headers, body string
		status        int
		code          string
	}{
		{"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunkedBody, 400, CodeBadRequest},
		{"Transfer-Encoding: chunked\r\ncontent-length: 5\r\n", chunkedBody, 400, CodeBadRequest},
		{"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello", 400, CodeBadRequest},
		{"Transfer-Encoding: identity\r\n", next, 501, CodeNotImplemented},
		{"transfer-encoding:  Identity \r\n", next, 501, CodeNotImplemented},
		{"Transfer-Encoding: gzip\r\n", next, 501, CodeNotImplemented},
		{"Transfer-Encoding: gzip, chunked\r\n", chunkedBody, 501, CodeNotImplemented},
		{"X-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "hello", 400, CodeBadRequest},
		{"X-A: b\r\n\tc\r\nContent-Length: 5\r\n", "hello", 400, CodeBadRequest},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		// A first request keeps the connection alive.
		io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
		if resp := readResponse(t, br); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("a plain request: %d close=%v", resp.StatusCode, resp.Close)
		}
		io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: t\r\n"+tc.headers+"\r\n"+tc.body)
		resp, code := errorOf(t, br)
		if resp.StatusCode != tc.status || code != tc.code || !resp.Close {
			t.Errorf("%q: %d %s close=%v; want %d %s and Connection: close", tc.headers, resp.StatusCode, code, resp.Close, tc.status, tc.code)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("%q: after the answer: %v; want EOF", tc.headers, err)
		}
	}
	// Chunked in any case is chunked.
	_, br := dialSend(t, addr, "POST /echo HTTP/1.1\r\nHost: t\r\nTRANSFER-ENCODING: Chunked\r\n\r\n"+chunkedBody)
	if resp := readResponse(t, br); resp.StatusCode != 200 || resp.Close {
		t.Errorf("Transfer-Encoding: Chunked: %d close=%v; want 200, kept alive", resp.StatusCode, resp.Close)
	}
}

// manyArgs is a query of n distinct keys.
func manyArgs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%d=1&", i)
	}
	return b.String()
}
