//go:build !race

package server

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/valyala/fasthttp"
)

// The routes a load balancer polls allocate nothing per request, as
// fasthttp's own hot paths do not (its allocation_test.go). The race
// detector allocates on its own, hence the build tag.
func TestHealthChecksDoNotAllocate(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	srv.AddHealth("pool", func(b []byte) []byte {
		o := jsonw.Open(b)
		o.Int("running", 3)
		return o.Close()
	})
	for _, path := range []string{"/health", "/ready"} {
		var req fasthttp.Request
		req.SetRequestURI(path)
		ctx := &fasthttp.RequestCtx{}
		ctx.Init(&req, nil, nil)
		serve := func() {
			ctx.Response.Reset()
			srv.serve(ctx)
		}
		serve()
		if ctx.Response.StatusCode() != 200 || !json.Valid(ctx.Response.Body()) {
			t.Fatalf("GET %s = %d %s", path, ctx.Response.StatusCode(), ctx.Response.Body())
		}
		if n := testing.AllocsPerRun(200, serve); n != 0 {
			t.Errorf("GET %s: %v allocations per request; want 0", path, n)
		}
	}
}

// The framing check that runs on every request scans the raw header block
// without allocating.
func TestFramingCheckDoesNotAllocate(t *testing.T) {
	var h fasthttp.RequestHeader
	err := h.Read(bufio.NewReader(strings.NewReader("POST /v1/hash/sha256 HTTP/1.1\r\nHost: t\r\n" +
		"User-Agent: curl/8\r\nAccept: */*\r\nContent-Type: application/octet-stream\r\n" +
		"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")))
	if err != nil || len(h.RawHeaders()) == 0 {
		t.Fatalf("parse: %v, %d raw bytes", err, len(h.RawHeaders()))
	}
	if e := framingError(&h); e != nil {
		t.Fatalf("framingError = %v; want nil", e)
	}
	if n := testing.AllocsPerRun(200, func() { framingError(&h) }); n != 0 {
		t.Errorf("framingError: %v allocations; want 0", n)
	}
}
