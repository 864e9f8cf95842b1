// Package taskpool bounds the CPU-heavy tasks running at once, with
// admission by predicted waiting time and a bounded, cancellable FIFO queue.
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
// Config.Queue is a count cap on top.
//
// Each [Class] (hybrid makes one per workload) keeps its own estimate: an
// exponentially weighted moving average of its tasks' run times, seeded by
// the caller, so 4 queued hashes of 50 µs and 4 thumbnails of 80 ms weigh
// what they cost. The work ahead also counts what is left of each running
// task's estimate. The sum is then calibrated by the waits that queued
// tasks really had against the sums they were admitted on (Stats.WaitBias),
// because under overload run times grow after admission, and a forecast
// from the estimates at the moment of admission comes out short.
//
// An admitted task waits in FIFO order for one of Size run slots; if its
// context ends while it waits it never starts and Do returns [ErrDeadline].
// A running task gets the caller's context and should watch it; Do returns
// when the task returns. A panic in a task becomes an [*PanicError] for that
// one caller; the caller and the process live on.
//
// # Why the task runs on the caller's goroutine
//
// An earlier version handed each task to a goroutine pool
// (github.com/panjf2000/ants/v2) and parked the caller until it answered.
// The hand-off bought nothing: Go preempts a CPU-bound goroutine wherever it
// runs, so a task on a pool goroutine delays other requests exactly as much
// as one on the request's own goroutine, and what protects them is the
// bound on tasks running at once, which the run slots give. It cost a
// park and a wake per task (5–10 µs measured for sha256 of 64 KiB, 10–13 µs
// in the team's field notes), more than the whole per-request budget. So a task runs
// where its caller is, once it holds a run slot; a panic is still recovered
// and returned as that caller's error.
//
// # Lifetimes
//
// The task runs on the caller's goroutine and Do returns when it has (or
// when it never started), so a caller may pass its own buffers, including a
// *fasthttp.RequestCtx's body, which stays valid until the handler returns.
package taskpool
