package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/server"
	"github.com/hybrid-server/hybrid/taskpool"
	"github.com/valyala/fasthttp"
)

// Mode is where a workload runs.
type Mode string

const (
	// Inline runs without admission: a short task on the request's
	// goroutine (no hand-off cost), a longer one on a goroutine of its own,
	// so that its 504 is on time (runInline); no bound beyond the server's
	// connection limit.
	Inline Mode = "inline"
	// Pool runs on the worker's bounded task pool: admission control (503
	// when full) and deadlines (504 while queued).
	Pool Mode = "pool"
	// Isolate runs in a short-lived child process with hard limits, behind
	// its own bounded admission (--isolate-procs).
	Isolate Mode = "isolate"
)

// Modes lists the modes.
var Modes = []Mode{Inline, Pool, Isolate}

// Isolator runs a job by name in a child process: *isolate.Isolator.
type Isolator interface {
	Run(ctx context.Context, job isolate.Job, input []byte) ([]byte, error)
}

// groupDefaults are the modes of groups that differ from ParseModes' def:
// images are untrusted input for complex decoders, so they are isolated;
// image-info reads a header only, so it runs inline.
var groupDefaults = map[string]Mode{"image": Isolate, "image-info": Inline}

// ParseModes parses --mode: "hash=pool,password=inline". Groups not named
// keep their default (def, or isolate for image and inline for image-info).
func ParseModes(s string, def Mode) (map[string]Mode, error) {
	m := map[string]Mode{}
	for _, g := range Groups() {
		m[g] = def
		if d, ok := groupDefaults[g]; ok {
			m[g] = d
		}
	}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		g, mode, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("mode %q: want group=mode", kv)
		}
		if _, known := m[g]; !known {
			return nil, fmt.Errorf("mode %q: unknown workload group %q; known: %s", kv, g, strings.Join(Groups(), ", "))
		}
		if !slices.Contains(Modes, Mode(mode)) {
			return nil, fmt.Errorf("mode %q: unknown mode %q; known: %s", kv, mode, modeList())
		}
		m[g] = Mode(mode)
	}
	return m, nil
}

func modeList() string {
	s := make([]string, len(Modes))
	for i, m := range Modes {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// Executor runs workloads in their mode. Its zero value is not usable: set
// Pool and Modes.
type Executor struct {
	Pool *taskpool.Pool
	// IsolatePool admits isolated tasks (its size bounds the children
	// running at once), and Isolate runs them.
	IsolatePool *taskpool.Pool
	Isolate     Isolator
	// Modes maps a workload group to its default mode.
	Modes map[string]Mode
	// AllowOverride lets a request pick its mode with ?mode=. Off by default:
	// a client must not move untrusted work out of isolation.
	AllowOverride bool
	// MaxBody bounds a request's body (--max-body; default
	// server.DefaultConfig's). The server streams bodies and leaves the
	// bound to the handler (server.Body).
	MaxBody int
	// TaskTimeout bounds a task, queueing included.
	TaskTimeout time.Duration
	// MaxOutput bounds decompressed output.
	MaxOutput int
	// Access is the gate of API keys and rate limits (nil: open).
	Access *Access
	// Cache holds the results of cacheable workloads (nil: none).
	Cache *ResultCache
	// IsolateTimeout is the isolate wall clock, for its 504's message.
	IsolateTimeout time.Duration
	// Image bounds: declared pixels (width × height × frames), output
	// pixels, and frames.
	ImageMaxPixels, ImageMaxOutput, ImageMaxFrames int
	Log                                            *slog.Logger

	classes sync.Map // workload name → *classes

	overrunOnce sync.Once
	overrunSem  chan struct{} // inline tasks running past their 504 (runInline)
}

// classes are a workload's admission classes in the two pools, one per
// input size bucket, made on first use.
type classes struct {
	pool, isolate [sizeBuckets]atomic.Pointer[taskpool.Class]
}

// Admission estimates a workload's run time per input size: a hash of
// 64 KiB and one of 32 MiB differ 500× in run time, and one average over
// both would let many small requests pull the estimate of the large ones
// down (admitting far more of them than the bound allows) or the reverse.
// Buckets are powers of 4 from 4 KiB: < 4 KiB, < 16 KiB, … , ≥ 256 MiB.
const sizeBuckets = 10

var bucketNames = [sizeBuckets]string{"<4KiB", "<16KiB", "<64KiB", "<256KiB", "<1MiB", "<4MiB", "<16MiB",
	"<64MiB", "<256MiB", ">=256MiB"}

func sizeBucket(n int) int { return min((bits.Len(uint(n>>12))+1)/2, sizeBuckets-1) }

// isolateStart is added to a workload's seed estimate in isolate mode: a
// child's start and the frame round trip (bench/RESULTS.md, issue 10: ~3 ms
// of CPU per one-task child here, more on slower hosts; the estimate
// follows the measured run times from the first task on).
const isolateStart = 5 * time.Millisecond

// classOf returns w's admission class in pool for an input of n bytes:
// named "workload/size bucket" (as /health lists them), seeded with w's
// Estimate (plus isolateStart in the isolate pool).
func (e *Executor) classOf(w *Workload, mode Mode, n int) *taskpool.Class {
	var cs *classes
	if c, ok := e.classes.Load(w.Name); ok {
		cs = c.(*classes)
	} else {
		c, _ := e.classes.LoadOrStore(w.Name, &classes{})
		cs = c.(*classes)
	}
	b := sizeBucket(n)
	slot, pool, seed := &cs.pool[b], e.Pool, w.Estimate
	if mode == Isolate {
		slot, pool, seed = &cs.isolate[b], e.IsolatePool, w.Estimate+isolateStart
	}
	if c := slot.Load(); c != nil {
		return c
	}
	c := pool.Class(w.Name+"/"+bucketNames[b], seed) // the same class if another goroutine made it first
	slot.Store(c)
	return c
}

// poolOf is the pool that admits mode's tasks; nil for inline.
func (e *Executor) poolOf(mode Mode) *taskpool.Pool {
	switch mode {
	case Pool:
		return e.Pool
	case Isolate:
		return e.IsolatePool
	}
	return nil
}

// run runs w in mode for a request that arrived at since, and answers by
// the task deadline (--task-timeout) in every mode. An isolated task ends
// at it (its child is killed). A pooled or inline task runs on a goroutine
// of its own, so that its 504 is sent at the deadline even when the task
// overruns it: the decoders, the ditherer and decompression watch their
// context and stop soon after, but jpegn, the resampler and the KDFs
// cannot be interrupted and run on to their end (each bounded in its work:
// docs/api.md). A pooled task keeps its run slot until it returns, so the
// pool still bounds the CPU that overrunning tasks hold; inline, which has
// no slots, lets at most maxOverruns tasks run on past their 504 at once
// (runInline). The hand-off costs ~3 µs (BenchmarkPoolPath: a goroutine, a
// wake-up and a timer), a tenth of a small hash's request, so a task that
// w.Short says is short whatever its content runs on the request's
// goroutine as before: its 504 can be late by that task's length, at most
// ~20 ms here (shortCompression; a hash under 1 MiB).
func (e *Executor) run(since time.Time, w *Workload, mode Mode, p Params, input []byte, release func()) ([]byte, error) {
	ctx, cancel := withDeadline(context.Background(), e.TaskTimeout)
	switch mode {
	case Inline:
		return e.runInline(ctx, cancel, w, p, input, release)
	case Pool:
		return e.runPooled(ctx, cancel, since, w, p, input, release)
	case Isolate:
		defer release()
		defer cancel()
		if e.Isolate == nil || e.IsolatePool == nil {
			break
		}
		var out []byte
		job := isolate.Job{Name: w.Name, Params: p, MaxOutput: e.replyLimit(), Codes: jobCodes}
		if w.MaxReply > 0 {
			job.MaxOutput = w.MaxReply
		}
		if w.BigHeap {
			job.Heap = 64 << 20 // measured: a win for argon2id and thumbnails, a loss for zstd of 1 MiB
		}
		err := e.classOf(w, Isolate, len(input)).DoSince(ctx, since, func(ctx context.Context) error {
			var err error
			out, err = e.Isolate.Run(ctx, job, input)
			return err
		})
		return out, err
	default:
		release()
		cancel()
	}
	return nil, fmt.Errorf("handlers: mode %q not available", mode)
}

// pooled is the outcome of a pooled task, handed from its goroutine.
type pooled struct {
	out  []byte
	err  error
	done chan struct{}
}

// runPooled queues and runs a pooled task on a goroutine of its own and
// waits for it or for its deadline, whichever is first; see run.
func (e *Executor) runPooled(ctx *deadlineCtx, cancel func(), since time.Time, w *Workload, p Params, input []byte,
	release func()) ([]byte, error) {
	class := e.classOf(w, Pool, len(input))
	if w.Short != nil && w.Short(p, len(input)) {
		defer release()
		defer cancel()
		var out []byte
		err := class.DoSince(ctx, since, func(ctx context.Context) error {
			var err error
			out, err = w.Run(ctx, p, input)
			return err
		})
		return out, err
	}
	r := &pooled{done: make(chan struct{})}
	go func() {
		defer release()
		defer cancel()
		r.err = class.DoSince(ctx, since, func(ctx context.Context) error {
			var err error
			r.out, err = w.Run(ctx, p, input)
			return err
		})
		close(r.done)
	}()
	select {
	case <-r.done:
		return r.out, r.err
	case <-ctx.Done():
		select {
		case <-r.done: // both at once: the task's own outcome wins
			return r.out, r.err
		default:
			return nil, taskpool.ErrDeadline
		}
	}
}

// maxOverruns is how many inline tasks may run on past their 504 at once,
// in one worker: a core's worth each.
func maxOverruns() int { return runtime.GOMAXPROCS(0) }

// The states of an inline task on a goroutine of its own.
const (
	inlineRunning int32 = iota
	inlineDone          // it returned while its request waited
	inlineOverrun       // its request was answered 504 and left it running
)

// runInline runs an inline task, on the request's goroutine if w says it
// is short, and otherwise on a goroutine of its own, waiting for it or for
// its deadline, whichever is first; see run. A task that overruns its
// deadline is answered 504 then if one of maxOverruns places is free, and
// holds that place until it returns; when none is, the request waits for
// its task and is answered with the task's own outcome, late: inline has no
// run slots, so this is what keeps tasks that no request waits for from
// piling up, one per 504, beyond a core's worth each.
func (e *Executor) runInline(ctx *deadlineCtx, cancel func(), w *Workload, p Params, input []byte,
	release func()) ([]byte, error) {
	if w.Short != nil && w.Short(p, len(input)) {
		defer release()
		defer cancel()
		return w.Run(ctx, p, input)
	}
	var state atomic.Int32
	r := &pooled{done: make(chan struct{})}
	go func() {
		defer release()
		defer cancel()
		func() {
			// On the request's goroutine the router turned a panic into a
			// 500; here it would end the worker.
			defer func() {
				if v := recover(); v != nil {
					r.out, r.err = nil, &taskpool.PanicError{Value: v, Stack: debug.Stack()}
				}
			}()
			r.out, r.err = w.Run(ctx, p, input)
		}()
		if !state.CompareAndSwap(inlineRunning, inlineDone) {
			<-e.overrunSlots() // inlineOverrun: its place is free
		}
		close(r.done)
	}()
	select {
	case <-r.done:
		return r.out, r.err
	case <-ctx.Done():
	}
	select {
	case <-r.done: // both at once: the task's own outcome wins
		return r.out, r.err
	case e.overrunSlots() <- struct{}{}:
		if state.CompareAndSwap(inlineRunning, inlineOverrun) {
			return nil, taskpool.ErrDeadline
		}
		<-e.overrunSlots() // it returned meanwhile
		<-r.done
		return r.out, r.err
	}
}

// overrunSlots is the semaphore of inline tasks running past their 504.
func (e *Executor) overrunSlots() chan struct{} {
	e.overrunOnce.Do(func() { e.overrunSem = make(chan struct{}, maxOverruns()) })
	return e.overrunSem
}

// imageLimits are the params that carry the image bounds to the workload,
// in every mode (parseImageLimits reads them); a zero bound is left out,
// for the workload's default.
func (e *Executor) imageLimits() Params {
	p := Params{}
	for k, v := range map[string]int{"max_pixels": e.ImageMaxPixels, "max_output_pixels": e.ImageMaxOutput,
		"max_frames": e.ImageMaxFrames} {
		if v > 0 {
			p[k] = strconv.Itoa(v)
		}
	}
	return p
}

// replyLimit is the longest reply an isolated child may send: no workload's
// output is longer than twice its input, the decompression bound
// (--max-output), or four bytes per output pixel of an image. A child that
// claims more is lying, and is killed before its reply is buffered.
func (e *Executor) replyLimit() int {
	maxBody, maxOut := e.MaxBody, e.MaxOutput
	if maxBody <= 0 {
		maxBody = server.DefaultConfig().MaxBody
	}
	if maxOut <= 0 {
		maxOut = DefaultMaxOutput
	}
	return max(2*maxBody, maxOut, 4*e.ImageMaxOutput) + 64<<10
}

// mode picks the request's mode: the group's default, or ?mode= when allowed.
func (e *Executor) mode(ctx *fasthttp.RequestCtx, w *Workload) (Mode, error) {
	asked := string(ctx.QueryArgs().Peek("mode"))
	if asked == "" {
		return e.Modes[w.Group], nil
	}
	if !e.AllowOverride {
		return "", server.Errorf(fasthttp.StatusBadRequest, CodeBadParam,
			"mode: choosing the mode per request is disabled (see --allow-mode-override)")
	}
	if !slices.Contains(Modes, Mode(asked)) {
		return "", badParam("mode=%s: want one of %s", server.Quote(asked), modeList())
	}
	return Mode(asked), nil
}

// Serve is the request path of every workload: pick the mode, refuse from
// the headers if its pool is overloaded, read the body, check, run,
// respond. Params are checked before anything is queued. The request's
// body is the task's input without a copy: run releases it once no task
// uses it.
func (e *Executor) Serve(ctx *fasthttp.RequestCtx, w *Workload, p Params) {
	mode, ok := e.admit(ctx, w, p)
	if !ok {
		return
	}
	maxBody := e.MaxBody
	if maxBody <= 0 {
		maxBody = server.DefaultConfig().MaxBody
	}
	if w.MaxBody > 0 {
		maxBody = min(maxBody, w.MaxBody)
	}
	input, release, err := server.Body(ctx, maxBody)
	if err != nil {
		server.WriteError(ctx, err)
		return
	}
	// The input's own checks parse untrusted bytes: an isolated task's are
	// run by its child, which the bytes reach first.
	if w.Check != nil && mode != Isolate {
		if err := w.Check(p, input); err != nil {
			release()
			server.WriteError(ctx, err)
			return
		}
	}
	var key cacheKey
	if e.Cache != nil && w.Cacheable {
		var done bool
		if key, done = e.Cache.lookup(ctx, w, p, input); done {
			release()
			return
		}
	}
	out, err := e.run(ctx.Time(), w, mode, p, input, release)
	if err != nil {
		e.writeError(ctx, w, mode, err)
		return
	}
	if key.ok {
		e.Cache.store(ctx, key, out)
	}
	ctx.SetContentType(w.contentType(p))
	ctx.Response.Header.Set("X-Hybrid-Mode", string(mode))
	// out is the task's own and never changes: no copy (a 64 MiB
	// decompression was held three times over).
	ctx.Response.SetBodyRaw(out)
}

// admit is the decision from the headers, shared by Serve and the routes'
// answer to Expect: 100-continue: the mode, the params, and whether the
// mode's pool would take the task. An overloaded pool refuses before the body is read: the
// body is never held in memory, and the lingering close discards it (or,
// with Expect: 100-continue, the client never sends it). It reports
// whether the request goes on; if not, it has written the response.
func (e *Executor) admit(ctx *fasthttp.RequestCtx, w *Workload, p Params) (Mode, bool) {
	if !e.Access.check(ctx) {
		return "", false
	}
	mode, err := e.mode(ctx, w)
	if err == nil && w.CheckParams != nil {
		err = w.CheckParams(p)
	}
	if err != nil {
		server.WriteError(ctx, err)
		return "", false
	}
	server.SetMode(ctx, string(mode))
	if pool := e.poolOf(mode); pool != nil {
		if err := pool.Refuse(); err != nil {
			server.EndEarly(ctx)
			e.writeError(ctx, w, mode, err)
			return "", false
		}
	}
	return mode, true
}

// writeError maps an execution error onto the error shape.
func (e *Executor) writeError(ctx *fasthttp.RequestCtx, w *Workload, mode Mode, err error) {
	var se *server.Error
	var pe *taskpool.PanicError
	var oe *taskpool.OverloadError
	var je *isolate.JobError
	var ce *isolate.CrashError
	switch {
	case errors.As(err, &se):
		server.WriteError(ctx, se)
	case errors.As(err, &je):
		// The child's own words: isolate has checked the code and status
		// against jobCodes (Job.Codes); WriteError cuts the message short.
		server.WriteError(ctx, &server.Error{Status: je.Status, Code: je.Code, Message: je.Message})
	case errors.As(err, &ce):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusInternalServerError, CodeIsolateCrashed,
			"%s crashed in its isolated process", w.Name))
	case errors.Is(err, isolate.ErrTimeout):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusGatewayTimeout, CodeIsolateTimeout,
			"%s did not finish within the isolate timeout of %v", w.Name, e.IsolateTimeout))
	case errors.Is(err, isolate.ErrMemory):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusUnprocessableEntity, CodeMemoryLimit,
			"%s exceeded the isolate memory limit", w.Name))
	case errors.Is(err, isolate.ErrCPU):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusUnprocessableEntity, CodeCPULimit,
			"%s exceeded the isolate CPU limit", w.Name))
	case errors.Is(err, isolate.ErrViolation):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusUnprocessableEntity, CodeSandboxViolation,
			"%s attempted an operation its sandbox forbids (a file, a socket or a process) and was stopped", w.Name))
	case errors.As(err, &oe):
		retry := int((oe.RetryAfter() + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retry))
		// The client's next request should reach a worker with room: on a
		// new connection, which the accept board gives to a worker that is
		// not busy. On this one it would come back here, and a worker that
		// refuses fast draws the most requests.
		ctx.SetConnectionClose()
		if oe.Full {
			server.WriteError(ctx, server.Errorf(fasthttp.StatusServiceUnavailable, CodeOverloaded,
				"the %s queue is full; retry in %d s", mode, retry))
			break
		}
		spent := ""
		if oe.Spent >= time.Millisecond {
			spent = fmt.Sprintf(", after %v spent receiving the request,", oe.Spent.Round(time.Millisecond))
		}
		server.WriteError(ctx, server.Errorf(fasthttp.StatusServiceUnavailable, CodeOverloaded,
			"overloaded: the predicted wait of %v%s exceeds the bound of %v; retry in %d s",
			oe.Wait.Round(time.Millisecond), spent, oe.Limit, retry))
	case errors.Is(err, taskpool.ErrClosed):
		ctx.SetConnectionClose()
		server.WriteError(ctx, server.Errorf(fasthttp.StatusServiceUnavailable, server.CodeDraining,
			"the worker is shutting down; retry"))
	case errors.Is(err, taskpool.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
		server.WriteError(ctx, server.Errorf(fasthttp.StatusGatewayTimeout, CodeTaskTimeout,
			"%s did not finish within the task timeout of %v", w.Name, e.TaskTimeout))
	case errors.As(err, &pe):
		e.Log.Error("task panicked", "workload", w.Name, "mode", string(mode), "panic", fmt.Sprint(pe.Value),
			"stack", string(pe.Stack))
		server.WriteError(ctx, err)
	default:
		e.Log.Error("task failed", "workload", w.Name, "mode", string(mode), "err", err.Error())
		server.WriteError(ctx, err)
	}
}

// Mount registers the workload routes on r:
//
//	POST /v1/hash/{algo}[?encoding=hex|base64]
//	POST /v1/password/hash/{argon2id|bcrypt|scrypt}
//	POST /v1/password/verify
//	POST /v1/compress/{codec}[?level=N]
//	POST /v1/decompress/{codec}
//	POST /v1/image/resize?width=&height=&fit=&format=&quality=
//	POST /v1/image/info
//
// Every route also takes ?mode=inline|pool|isolate when AllowOverride is set.
func (e *Executor) Mount(r *server.Router) {
	post := fasthttp.MethodPost
	// Each route answers Expect: 100-continue with admit's decision.
	type route struct {
		h     fasthttp.RequestHandler
		early server.Early
	}
	mk := func(name string, params func(*fasthttp.RequestCtx) Params) route {
		w, ok := Lookup(name)
		if !ok {
			panic("handlers: no workload " + name)
		}
		return route{
			h:     func(ctx *fasthttp.RequestCtx) { e.Serve(ctx, w, params(ctx)) },
			early: func(ctx *fasthttp.RequestCtx) bool { _, ok := e.admit(ctx, w, params(ctx)); return ok },
		}
	}
	handle := func(path string, rt route) { r.HandleEarly(post, path, rt.h, rt.early) }
	handlePrefix := func(path string, rt route) { r.HandlePrefixEarly(post, path, rt.h, rt.early) }
	handlePrefix("/v1/hash/", mk("hash", func(ctx *fasthttp.RequestCtx) Params {
		return Params{"algo": server.PathParam(ctx, "/v1/hash/"), "encoding": string(ctx.QueryArgs().Peek("encoding"))}
	}))
	handlePrefix("/v1/password/hash/", mk("password-hash", func(ctx *fasthttp.RequestCtx) Params {
		return Params{"algo": server.PathParam(ctx, "/v1/password/hash/")}
	}))
	handle("/v1/password/verify", mk("password-verify", func(*fasthttp.RequestCtx) Params {
		return Params{}
	}))
	handlePrefix("/v1/compress/", mk("compress", func(ctx *fasthttp.RequestCtx) Params {
		return Params{"codec": server.PathParam(ctx, "/v1/compress/"), "level": string(ctx.QueryArgs().Peek("level"))}
	}))
	handlePrefix("/v1/decompress/", mk("decompress", func(ctx *fasthttp.RequestCtx) Params {
		p := Params{"codec": server.PathParam(ctx, "/v1/decompress/"), "max_output": fmt.Sprint(e.MaxOutput)}
		if lvl := ctx.QueryArgs().Peek("level"); len(lvl) > 0 {
			p["level"] = string(lvl)
		}
		return p
	}))
	handle("/v1/image/resize", mk("image-resize", func(ctx *fasthttp.RequestCtx) Params {
		q := ctx.QueryArgs()
		p := e.imageLimits()
		for _, k := range []string{"width", "height", "dpr", "fit", "gravity", "format", "quality", "background", "enlarge", "frames"} {
			if v := q.Peek(k); len(v) > 0 {
				p[k] = string(v)
			}
		}
		return p
	}))
	handle("/v1/image/info", mk("image-info", func(*fasthttp.RequestCtx) Params { return e.imageLimits() }))
}
