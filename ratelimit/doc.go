// Package ratelimit decides whether a client may make one more request:
// GCRA, exact across the worker processes of one box through a table in
// shared memory, and exact across hosts through one atomic Redis script.
//
// # The algorithm
//
// The generic cell rate algorithm (GCRA, ATM Forum TM 4.1; the algorithm
// behind Redis' redis-cell and Stripe's limiter) keeps one number per
// client: its theoretical arrival time (TAT). A rule of Count requests per
// Period with a burst of Burst spaces requests T = Period/Count apart and
// lets a client run up to Burst of them ahead of schedule:
//
//	tat' = max(tat, now)
//	allow  iff  tat' + T − now ≤ Burst·T ;  then tat = tat' + T
//
// Over an interval of length d that starts with the client idle, at most
// Burst + ⌊d/T⌋ + 1 requests are admitted; a client that sends as fast as
// it can gets exactly Burst at once and then one every T. That is the
// formula the tests hold the limiters to (over-admission beyond it: 0).
//
// GCRA was chosen over a sliding window because one integer per client is
// its whole state: one compare-and-set in shared memory, one GET and SET in
// Redis, no per-request log to trim, and no approximation (a sliding-window
// counter weights the last window and admits up to twice the limit at its
// edges; an exact sliding log keeps Count timestamps per client). Unlike a
// fixed window it never admits 2·Count around a window's boundary.
//
// # One box: the shared table
//
// The primary creates the table (a memfd, [NewTable]) and every worker maps
// it ([OpenTable]), as the accept board is. It is a hash table of buckets of
// 128 bytes: a lock word and seven (key, TAT) slots. A key is a keyed
// BLAKE3 digest of the client's identity, with a random key made with the
// table: a client cannot aim at another's bucket. A decision takes the
// bucket's lock (a compare-and-set of the holder's pid), reads and writes
// one slot and lets go: a few hundred nanoseconds, and exact, since every
// decision about a key is made under its bucket's lock, whichever worker
// makes it.
//
// A worker killed while it holds a lock (kill -9 between two instructions)
// would hold it forever: a waiter that has spun for lockStale checks
// whether the holder's pid is alive, and takes the lock from a dead one;
// any holder is overruled after lockForce, 2 s (a stopped process; far
// longer than a CPU quota's 100 ms throttling periods).
//
// A full bucket forgets one client to make room: an expired one (its TAT is
// past, the same state as a client never seen) if any, else the one closest
// to expiry (the most allowance left), which is then admitted as if new:
// the only over-admission the table allows, counted in [Table.Evictions].
// With the default 57,344 slots that needs more than seven clients active
// at once in one bucket.
//
// Times are CLOCK_MONOTONIC nanoseconds, the same clock in every process
// of the box, so the table is handed as it is to an upgrade's new primary.
//
// # Many hosts: Redis
//
// [Redis] runs one Lua script per decision, atomic on the server, with the
// server's own clock (TIME): no two hosts' clocks meet. The key expires
// when its TAT is past. Every call is bounded by a timeout; an error is
// returned and the caller decides whether to fail open or closed.
package ratelimit
