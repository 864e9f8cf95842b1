// Package taskpool runs CPU-heavy tasks off the request path on a bounded
// goroutine pool (github.com/panjf2000/ants/v2), with a bounded, cancellable
// admission queue in front of it.
//
// # Mechanism
//
// [Pool.Do] admits a task at once or refuses it: when Size tasks run and Queue
// more wait, it returns [ErrOverloaded] without blocking, so a burst turns into
// fast 503s instead of an unbounded pile of goroutines. An admitted task waits
// in FIFO order for one of Size run slots; if its context ends while it waits it
// never starts and Do returns [ErrDeadline]. A running task gets the caller's
// context and should watch it; Do returns when the task returns. A panic in a
// task becomes an [*PanicError] for that one caller; the worker goroutine and
// the process live on.
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
