package handlers

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// Params are a workload's parameters, validated by its Check.
type Params map[string]string

// Func is a workload: it turns input into output. It must not keep input or
// return a slice of it past its return, and should watch ctx when it runs long.
type Func func(ctx context.Context, p Params, input []byte) ([]byte, error)

// Workload is a named Func with its validation and its output's media type.
type Workload struct {
	// Name identifies the workload across processes ("hash", "compress", …).
	Name string
	// Group is the key of its mode in --mode ("hash", "password", "compress").
	Group string
	// CheckParams validates the params alone, in the worker, in every mode,
	// before the body is read. May be nil.
	CheckParams func(p Params) error
	// Check validates the input (and params) before the work is queued, so
	// that a bad request never takes a pool slot. It parses untrusted
	// bytes, so the worker runs it only inline and on the pool; an
	// isolated task's input is first parsed in its child, which runs Check
	// and then Run. May be nil.
	Check func(p Params, input []byte) error
	// Run does the work.
	Run Func
	// Estimate is a first guess of one task's run time, which seeds the
	// admission estimate of the workload until its tasks have been timed
	// (package taskpool). Zero: taskpool.DefaultEstimate.
	Estimate time.Duration
	// MaxReply bounds the output of a workload whose output is small
	// whatever its input (a digest, a password hash, an image's header):
	// an isolated child that replies more is lying. 0: the Executor's
	// general bound (replyLimit).
	MaxReply int
	// Short, when set, reports whether a task of these params and input
	// size is short whatever the input's content (a hash of less than 1
	// MiB): pooled, it then runs on the request's goroutine, saving the
	// hand-off that lets an overrunning task be answered at its deadline
	// (~3 µs, a tenth of a small request's CPU; see Executor.run). May be
	// nil: never.
	Short func(p Params, n int) bool
	// MaxBody bounds the request body below the server's --max-body: the
	// JSON endpoints take jsonBodyLimit. 0: --max-body.
	MaxBody int
	// BigHeap marks a workload that grows a heap of tens of MiB whatever
	// its input's size (argon2id's 19 MiB, an image decode): isolated, its
	// child maps its heap ahead as huge pages (isolate.Job.Heap).
	BigHeap bool
	// Cacheable marks a workload whose output is a function of its params
	// and input alone, and dear enough that a digest of the input (~1 ms
	// for 4 MiB) is worth its saving: its results are cached and carry an
	// ETag (see ResultCache). Never a password workload: its key would be
	// a fast digest of the password.
	Cacheable bool
	// ContentType of the output.
	ContentType string
	// ContentTypeOf, when set, gives the output's type from the params
	// instead (compress: the codec's own media type).
	ContentTypeOf func(Params) string
}

func (w *Workload) contentType(p Params) string {
	if w.ContentTypeOf != nil {
		return w.ContentTypeOf(p)
	}
	return w.ContentType
}

var registry = map[string]*Workload{}

// Register adds w; it panics on a duplicate name. The built-in workloads
// register at init; the isolate child's test-only faults register at start.
func Register(w *Workload) {
	if _, dup := registry[w.Name]; dup {
		panic("handlers: duplicate workload " + w.Name)
	}
	registry[w.Name] = w
}

// Lookup returns the workload named name.
func Lookup(name string) (*Workload, bool) {
	w, ok := registry[name]
	return w, ok
}

// Groups returns the mode groups, sorted.
func Groups() []string {
	var gs []string
	for _, w := range registry {
		if !slices.Contains(gs, w.Group) {
			gs = append(gs, w.Group)
		}
	}
	slices.Sort(gs)
	return gs
}

func badParam(format string, args ...any) *server.Error {
	return server.Errorf(fasthttp.StatusBadRequest, CodeBadParam, format, args...)
}

func unprocessable(code, format string, args ...any) *server.Error {
	return server.Errorf(fasthttp.StatusUnprocessableEntity, code, format, args...)
}

// Error codes of the workloads, besides the server's own.
const (
	CodeBadParam        = server.CodeBadParam   // 400
	CodeUnknownAlgo     = "unknown_algorithm"   // 404
	CodeParamOutOfRange = "param_out_of_range"  // 422
	CodeBadInput        = "bad_input"           // 422
	CodeCorruptInput    = "corrupt_input"       // 422
	CodePasswordTooLong = "password_too_long"   // 422
	CodeOutputTooLarge  = "output_too_large"    // 413
	CodeOverloaded      = server.CodeOverloaded // 503
	CodeTaskTimeout     = "task_timeout"        // 504
	// The outcomes of isolation (package isolate).
	CodeIsolateTimeout   = "isolate_timeout"   // 504
	CodeMemoryLimit      = "memory_limit"      // 422
	CodeCPULimit         = "cpu_limit"         // 422
	CodeSandboxViolation = "sandbox_violation" // 422
	CodeIsolateCrashed   = "isolate_crashed"   // 500
)

// jobCodes are the errors an isolated workload may answer with, and their
// status: a child's error is passed on only if it is one of these. They
// are what the workloads' Check and Run return (and 500 internal, a
// workload's unexpected error).
var jobCodes = map[string]int{
	CodeBadParam: 400, server.CodeBadRequest: 400, CodeUnknownAlgo: 404,
	CodeParamOutOfRange: 422, CodeBadInput: 422, CodeCorruptInput: 422, CodePasswordTooLong: 422,
	CodeOutputTooLarge: 413, CodeUnsupportedFormat: 415, CodeBadImage: 422, CodeImageTooLarge: 422,
	server.CodeInternal: 500,
}

// intParam parses p[key] as an integer in [lo, hi], or returns def when absent.
// Out of range is 400 too: the ranges of levels are syntax, not resources.
func intParam(p Params, key string, def, lo, hi int) (int, error) {
	v, ok := p[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || strconv.Itoa(n) != v { // no "+3", "03"
		return 0, badParam("%s=%s: want an integer", key, server.Quote(v))
	}
	if n < lo || n > hi {
		return 0, badParam("%s=%d: want %d to %d", key, n, lo, hi)
	}
	return n, nil
}
