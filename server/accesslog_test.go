package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// accessLogServer is a server with GET /x and its access log in a file.
func accessLogServer(t testing.TB) (*Server, string) {
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := OpenAccessLog(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	srv := New(Config{}, slog.New(slog.DiscardHandler), 3)
	srv.SetAccessLog(l)
	srv.Router.Handle(fasthttp.MethodGet, "/x", func(ctx *fasthttp.RequestCtx) {
		SetMode(ctx, "pool")
		ctx.SetBodyString("hello")
	})
	return srv, path
}

func serveOne(srv *Server, uri string, hdr ...string) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetRequestURI(uri)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 51234}, nil)
	srv.serve(ctx)
	return ctx
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestAccessLogLine(t *testing.T) {
	srv, path := accessLogServer(t)
	ctx := serveOne(srv, "/x?token=secret", "X-Request-ID", "abc-123.Z_")
	if got := string(ctx.Response.Header.Peek(RequestIDHeader)); got != "abc-123.Z_" {
		t.Errorf("X-Request-ID echoed = %q; want the client's", got)
	}
	hostile := "/" + strings.Repeat("\n\"}{\x00\xff<", 1500)
	ctx = serveOne(srv, hostile, "X-Request-ID", "bad id\"")
	gen := string(ctx.Response.Header.Peek(RequestIDHeader))
	if len(gen) != 32 || !validRequestID([]byte(gen)) {
		t.Errorf("generated X-Request-ID = %q; want 32 hex digits", gen)
	}
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines; want 2", len(lines))
	}
	l := lines[0]
	want := map[string]any{"msg": "access", "method": "GET", "path": "/x", "status": 200.0, "bytes": 5.0,
		"mode": "pool", "worker": 3.0, "remote": "10.0.0.7:51234", "request_id": "abc-123.Z_"}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("line[%q] = %v; want %v", k, l[k], v)
		}
	}
	if d, ok := l["duration"].(float64); !ok || d < 0 {
		t.Errorf("duration = %v", l["duration"])
	}
	if _, ok := l["time"].(string); !ok {
		t.Errorf("time = %v", l["time"])
	}
	h := lines[1]
	if h["status"] != 404.0 || h["request_id"] != gen {
		t.Errorf("hostile line: status %v, id %v; want 404, %s", h["status"], h["request_id"], gen)
	}
	// Each byte of it is at most one character (U+FFFD for invalid UTF-8).
	if p, _ := h["path"].(string); len([]rune(p)) > MaxLogPath || !strings.HasPrefix(p, "/") {
		t.Errorf("hostile path logged as %d bytes %q…", len(p), p[:min(len(p), 20)])
	}
}

func TestAccessLogOpen(t *testing.T) {
	if l, err := OpenAccessLog("off", nil); l != nil || err != nil {
		t.Errorf(`OpenAccessLog("off") = %v, %v; want nil, nil`, l, err)
	}
	if _, err := OpenAccessLog("", nil); err == nil {
		t.Error(`OpenAccessLog("") succeeded; want an error`)
	}
	if _, err := OpenAccessLog(filepath.Join(t.TempDir(), "no", "such"), nil); err == nil {
		t.Error("OpenAccessLog of a missing directory succeeded")
	}
}

// BenchmarkDone is the per-request cost of Server.done: metrics and the
// request id, with the access log off and on (a file).
func BenchmarkDone(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "log=off"
		if on {
			name = "log=file"
		}
		b.Run(name, func(b *testing.B) {
			srv, _ := accessLogServer(b)
			if !on {
				srv.SetAccessLog(nil)
			}
			ctx := serveOne(srv, "/x")
			b.ReportAllocs()
			for b.Loop() {
				srv.done(ctx, nil)
			}
		})
	}
}

// An absolute-form target logs its path only: its userinfo may be a
// credential.
func TestAccessLogDropsUserinfo(t *testing.T) {
	srv, path := accessLogServer(t)
	serveOne(srv, "http://user:secretpw@host/p?q=1")
	lines := readLines(t, path)
	if len(lines) != 1 || lines[0]["path"] != "/p" {
		t.Errorf("lines %v; want one with the path /p and no userinfo", lines)
	}
}
