//go:build testhooks

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// testHooksEnv switches on fault injection for the integration tests. This
// file is built only with -tags testhooks, which the test harness sets: the
// release binary has no test route, no fault workload and ignores the
// variable (testhooks_off.go). Documented in the README: it names a file that a
// worker reads when it starts, whose first word picks the fault:
//
//	crash   exit 1 before reporting ready
//	config  fail the start-up checks (exit 78, EX_CONFIG)
//	hang    report ready, then never send a heartbeat
//	slow    sleep 1h before reporting ready
//
// An empty or missing file means no fault. The switch also registers
// GET /_test/sleep?ms=N (answers 200 after N ms), GET /_test/panic, and
// POST /_test/task?ms=N[&panic=1][&stubborn=1][&mode=inline|pool]: a workload
// that sleeps N ms (or panics; stubborn: ignoring its deadline); and
// POST /_test/isolate/{panic|segv|alloc|spin|sleep|fork|dial}[?addr=]: the
// fault workloads of package isolate, each run in an isolated child.
const testHooksEnv = "HYBRID_TEST_HOOKS"

type testHooks struct {
	on    bool
	fault string
	w     *procpool.Worker
}

func loadTestHooks(w *procpool.Worker) (testHooks, error) {
	path := os.Getenv(testHooksEnv)
	if path == "" {
		return testHooks{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return testHooks{}, err
	}
	fault, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return testHooks{on: true, fault: strings.TrimSpace(fault), w: w}, nil
}

// atStart applies a start-up fault; stop says the worker must exit with code.
func (h testHooks) atStart(log *slog.Logger) (code int, stop bool) {
	switch h.fault {
	case "crash":
		log.Error("test hook: crashing before ready")
		return 1, true
	case "config":
		msg := "test hook: bad configuration"
		fmt.Fprintln(os.Stderr, msg)
		h.w.Fatal(msg)
		return procpool.ExitConfig, true
	case "slow":
		log.Warn("test hook: never becoming ready")
		time.Sleep(time.Hour)
	}
	return 0, false
}

func (h testHooks) heartbeats() bool { return h.fault != "hang" }

func (h testHooks) register(r *server.Router, exec *handlers.Executor) {
	if !h.on {
		return
	}
	exec.Modes["test"] = handlers.Pool
	task := &handlers.Workload{Name: "test-task", Group: "test", ContentType: "application/json",
		Run: func(ctx context.Context, p handlers.Params, _ []byte) ([]byte, error) {
			if p["panic"] == "1" {
				panic("test hook: panic in a task")
			}
			ms, _ := strconv.Atoi(p["ms"])
			if p["stubborn"] == "1" { // ignores its deadline, as CPU-bound work does
				time.Sleep(time.Duration(ms) * time.Millisecond)
				return []byte(`{}`), nil
			}
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return []byte(fmt.Sprintf(`{"slept_ms":%d,"pid":%d}`, ms, os.Getpid())), nil
		}}
	exec.Modes["test-isolate"] = handlers.Isolate
	r.HandlePrefix(fasthttp.MethodPost, "/_test/isolate/", func(ctx *fasthttp.RequestCtx) {
		fault := server.PathParam(ctx, "/_test/isolate/")
		w := &handlers.Workload{Name: "fault-" + fault, Group: "test-isolate", ContentType: "text/plain"}
		exec.Serve(ctx, w, handlers.Params{"addr": string(ctx.QueryArgs().Peek("addr"))})
	})
	r.Handle(fasthttp.MethodPost, "/_test/task", func(ctx *fasthttp.RequestCtx) {
		q := ctx.QueryArgs()
		exec.Serve(ctx, task, handlers.Params{"ms": string(q.Peek("ms")), "panic": string(q.Peek("panic")),
			"stubborn": string(q.Peek("stubborn"))})
	})
	r.Handle(fasthttp.MethodGet, "/_test/sleep", func(ctx *fasthttp.RequestCtx) {
		ms, err := strconv.Atoi(string(ctx.QueryArgs().Peek("ms")))
		if err != nil || ms < 0 || ms > 60_000 {
			server.WriteError(ctx, server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, "ms: want 0 to 60000"))
			return
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		server.WriteJSON(ctx, fasthttp.StatusOK, map[string]int{"slept_ms": ms, "pid": os.Getpid()})
	})
	r.Handle(fasthttp.MethodGet, "/_test/panic", func(ctx *fasthttp.RequestCtx) {
		panic("test hook: panic in a handler")
	})
}

// testRole runs the processes the isolate fork fault starts: they sleep
// until killed, so a test can see whether any survive.
func testRole() (code int, ok bool) {
	if os.Getenv(isolate.RoleEnv) != isolate.RoleFaultSleeper {
		return 0, false
	}
	return isolate.RunFaultSleeper(), true
}
