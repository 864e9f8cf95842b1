// Package handlers holds hybrid's workloads and the one path a request takes
// through them:
//
//	route → mode → CheckParams → admission → body → Check (inline, pool) → Run → response
//
// A workload is one plain function, func(ctx, Params, input) (output, error),
// registered by name. It knows nothing of modes: the [Executor] runs it
// inline on the request goroutine, on the bounded [taskpool.Pool], or in an
// isolate child (package isolate), which looks it up by the same name in the
// same [Lookup] and runs its Check there: an isolated task's input is parsed
// only in its child. Params are plain strings so that they cross a process
// boundary unchanged.
//
// Every error's status and code is decided in one table, Executor.writeError:
// the workloads' own *server.Error values, taskpool's and isolate's sentinel
// and typed errors, and an isolated child's *isolate.JobError, passed on only
// when its code is one of jobCodes.
//
// Errors a client can fix are *server.Error values with their status (400 for
// a bad parameter, 422 for input that parses but cannot be processed, 413 for
// output over a bound); anything else is a 500.
package handlers
