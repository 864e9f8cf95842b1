//go:build !race

package server

import (
	"encoding/json"
	"log/slog"
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
