//go:build testhooks

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
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
// variable (testhooks_off.go). Documented in docs/architecture.md: it names a file that a
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
// POST /_test/isolate/{fault}[?addr=][&path=]: the fault jobs below
// (testJob), each run in an isolated child.
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
	case "config": // runWorker reports it as its own configuration errors
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
		w, ok := handlers.Lookup("fault-" + fault) // a workload with checks of its own
		if !ok {
			w = &handlers.Workload{Name: "fault-" + fault, Group: "test-isolate", ContentType: "text/plain", MaxReply: 4 << 20}
		}
		q := ctx.QueryArgs()
		exec.Serve(ctx, w, handlers.Params{"addr": string(q.Peek("addr")), "path": string(q.Peek("path")),
			"pid": strconv.Itoa(os.Getpid())})
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
func testRole(role string) (code int, ok bool) {
	if role != roleFaultSleeper {
		return 0, false
	}
	time.Sleep(time.Hour)
	return 0, true
}

// roleFaultSleeper is the role of the processes the fork fault starts.
const roleFaultSleeper = "fault-sleeper"

// The header-panic fault is a workload whose input check panics, as a
// broken header parser would: isolated, its input must reach that parser
// only in the child (a typed outcome, isolate_crashed), never in the worker.
func init() {
	handlers.Register(&handlers.Workload{Name: "fault-header-panic", Group: "test-isolate", ContentType: "text/plain",
		Check: func(handlers.Params, []byte) error { panic("fault: the header parser panicked") },
		Run:   func(context.Context, handlers.Params, []byte) ([]byte, error) { return []byte("ran"), nil }})
}

// testJob is the fault jobs of an isolate child, each misbehaving in one
// way the isolator must contain: crashing, hoarding, spinning, hanging,
// escaping its sandbox (a process, a socket, a signal to its parent, its
// own cgroup's limit, a file), or lying in its reply.
func testJob(name string) (isolate.Func, bool) {
	f, ok := faults[strings.TrimPrefix(name, "fault-")]
	return f, ok && strings.HasPrefix(name, "fault-")
}

var faults = map[string]isolate.Func{
	"panic": func(context.Context, map[string]string, []byte) ([]byte, error) {
		panic("fault: panic in an isolated task")
	},
	"segv": func(context.Context, map[string]string, []byte) ([]byte, error) {
		var p *int
		return []byte(strconv.Itoa(*p)), nil // a nil dereference: SIGSEGV
	},
	"alloc": func(context.Context, map[string]string, []byte) ([]byte, error) {
		var hoard [][]byte
		for {
			b := make([]byte, 16<<20)
			for i := range b {
				b[i] = byte(i)
			}
			hoard = append(hoard, b)
		}
	},
	"spin": func(context.Context, map[string]string, []byte) ([]byte, error) {
		for x := 0; ; x++ {
			_ = x
		}
	},
	"sleep": func(context.Context, map[string]string, []byte) ([]byte, error) {
		time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock and exit
		return nil, nil
	},
	"fork": func(context.Context, map[string]string, []byte) ([]byte, error) {
		started := 0
		for range 200 { // a fork bomb
			cmd := exec.Command("/proc/self/exe")
			cmd.Env = []string{procpool.RoleEnv + "=" + roleFaultSleeper}
			if cmd.Start() != nil {
				break
			}
			started++
		}
		return []byte(fmt.Sprintf("started %d processes", started)), nil
	},
	"dial": func(_ context.Context, p map[string]string, _ []byte) ([]byte, error) {
		conn, err := net.DialTimeout("tcp", p["addr"], 2*time.Second)
		if err != nil {
			return nil, &isolate.JobError{Status: 422, Code: "dial_failed", Message: err.Error()}
		}
		conn.Close()
		return []byte("connected to " + p["addr"]), nil
	},
	"kill-parent": func(_ context.Context, p map[string]string, _ []byte) ([]byte, error) {
		pid, _ := strconv.Atoi(p["pid"]) // the worker's, given: getppid itself is refused
		err := syscall.Kill(pid, syscall.SIGKILL)
		return []byte(fmt.Sprintf("kill(%d): %v", pid, err)), nil
	},
	"raise-limit": func(context.Context, map[string]string, []byte) ([]byte, error) {
		// Its own memory cgroup's limit, as /proc/self/cgroup names it.
		b, _ := os.ReadFile("/proc/self/cgroup")
		for _, line := range strings.Split(string(b), "\n") {
			if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && (parts[1] == "memory" || parts[1] == "") {
				for _, f := range []string{"/sys/fs/cgroup/memory" + parts[2] + "/memory.limit_in_bytes",
					"/sys/fs/cgroup" + parts[2] + "/memory.max"} {
					if err := os.WriteFile(f, []byte("-1"), 0); err == nil {
						return []byte("raised " + f), nil
					}
				}
			}
		}
		return []byte("could not raise the limit"), nil
	},
	"read-file": func(_ context.Context, p map[string]string, _ []byte) ([]byte, error) {
		b, err := os.ReadFile(p["path"])
		if err != nil {
			return []byte("read: " + err.Error()), nil
		}
		return b, nil
	},
	// Lies: each writes a reply outside the protocol and stays alive.
	"lie-garbage":     lie("not a header\n"),
	"lie-long-header": lie(`{"message":"` + strings.Repeat("x", 256<<10)),
	"lie-size":        lie(`{"size":1073741824}` + "\nxx"),
	"lie-status": func(context.Context, map[string]string, []byte) ([]byte, error) {
		return nil, &isolate.JobError{Status: 101, Code: "switching", Message: "not an error"}
	},
	"lie-code": func(context.Context, map[string]string, []byte) ([]byte, error) {
		return nil, &isolate.JobError{Status: 422, Code: "made_up", Message: strings.Repeat("y", 4<<10)}
	},
	// A reply over the workload's bound: 5 MiB where a test job may send 4.
	"lie-long-reply": func(context.Context, map[string]string, []byte) ([]byte, error) {
		return make([]byte, 5<<20), nil
	},
}

// lie writes reply straight to stdout, where the frame goes, then hangs.
func lie(reply string) isolate.Func {
	return func(context.Context, map[string]string, []byte) ([]byte, error) {
		os.Stdout.WriteString(reply)
		time.Sleep(time.Hour)
		return nil, nil
	}
}
