// Package handlers holds hybrid's workloads and the one path a request takes
// through them:
//
//	route → workload + params → Check (before any queueing) → mode → Run → response
//
// A workload is one plain function, func(ctx, Params, input) (output, error),
// registered by name. It knows nothing of modes: the [Executor] runs it
// inline on the request goroutine or on the bounded [taskpool.Pool], and the
// isolate child (a later mode) looks it up by the same name in the same
// [Lookup]. Params are plain strings so that they cross a process boundary
// unchanged.
//
// Errors a client can fix are *server.Error values with their status (400 for
// a bad parameter, 422 for input that parses but cannot be processed, 413 for
// output over a bound); anything else is a 500.
package handlers
