// Package taskpool runs CPU-heavy tasks off the request path on a bounded
// goroutine pool (github.com/panjf2000/ants/v2), with a bounded, cancellable
// admission queue in front of it.
//
// # Mechanism
//
// [Pool.Do] and [Class.Do] admit a task at once or refuse it. A task that
// finds a free run slot runs. Otherwise it is admitted to a FIFO queue while
// its predicted wait, the estimated service time of the tasks queued ahead
// of it divided by the run slots, is within Config.QueueWait, and refused at
// once with an [*OverloadError] (errors.Is [ErrOverloaded]) beyond it, so a
// burst of seconds of work is queued and served while real overload turns
// into fast 503s with a Retry-After instead of requests that time out.
// Config.Queue is a count cap on top, a memory bound only.
//
// Each [Class] (hybrid makes one per workload) keeps its own estimate: an
// exponentially weighted moving average of its tasks' run times, seeded by
// the caller, so 4 queued hashes of 50 µs and 4 thumbnails of 80 ms weigh
// what they cost. A running task already past its class's estimate raises
// that class's weight in the prediction at once, so admission follows a
// slowdown before the first slow task has finished.
//
// An admitted task waits in FIFO order for one of Size run slots; if its
// context ends while it waits it never starts and Do returns [ErrDeadline].
// A running task gets the caller's context and should watch it; Do returns
// when the task returns. A panic in a task becomes an [*PanicError] for that
// one caller; the worker goroutine and the process live on.
//
// ants alone cannot do this (ants v2.12): its blocking Submit takes no
// context, its "waiting" callers are parked goroutines with no order and no
// way out, and its panic handler is pool-wide, so the waiting caller would
// never hear of the panic. ants keeps what it is good at: reusing goroutines
// and resizing at run time ([Pool.Tune]).
//
// # Lifetimes
//
// The task runs on another goroutine than the caller's. Anything it reads must
// stay valid until Do returns; Do never returns before the task has (unless the
// task never started), so a caller may pass its own buffers, but never a
// *fasthttp.RequestCtx's bytes if the handler may return first.
package taskpool
