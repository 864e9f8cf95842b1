package handlers

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/hybrid-server/hybrid/taskpool"
	"github.com/valyala/fasthttp"
)

// pathExecutor is a worker's Executor on a router, as cmd/hybrid wires it.
func pathExecutor(tb testing.TB) *server.Router {
	tb.Helper()
	pool, err := taskpool.New(taskpool.Config{Size: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pool.Close(context.Background()) })
	modes, err := ParseModes("", Pool)
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := &Executor{Pool: pool, Modes: modes, TaskTimeout: 30 * time.Second, MaxOutput: 1 << 20, Log: log,
		ImageMaxPixels: 1, ImageMaxOutput: 1, ImageMaxFrames: 1}
	r := server.NewRouter(log)
	e.Mount(r)
	return r
}

func sha256Request(body []byte) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("/v1/hash/sha256")
	req.SetBody(body)
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, nil, nil)
	return ctx
}

// The request path of a pooled workload, without the network: route, check,
// pick the mode, admit, run, respond. With an empty body the work itself is
// nothing, so what is left is the path's own cost.
func BenchmarkPoolPath(b *testing.B) {
	r := pathExecutor(b)
	for _, size := range []int{0, 64 << 10} {
		b.Run(fmtSize(size), func(b *testing.B) {
			ctx := sha256Request(make([]byte, size))
			b.ReportAllocs()
			for b.Loop() {
				ctx.Response.Reset()
				r.Serve(ctx)
			}
			if ctx.Response.StatusCode() != 200 {
				b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
			}
		})
	}
}

func fmtSize(n int) string {
	if n == 0 {
		return "empty"
	}
	return "64KiB"
}

func TestSizeBuckets(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 0}, {4095, 0}, {4096, 1}, {16383, 1}, {16384, 2}, {65535, 2}, {65536, 3},
		{1 << 20, 5}, {32 << 20, 7}, {256 << 20, 9}, {1 << 40, 9},
	} {
		if got := sizeBucket(tc.n); got != tc.want || !strings.HasPrefix(bucketNames[got], "<") && got != sizeBuckets-1 {
			t.Errorf("sizeBucket(%d) = %d (%s); want %d (%s)", tc.n, got, bucketNames[got], tc.want, bucketNames[tc.want])
		}
	}
}
