// Package resp is a small Redis client: RESP2 over TCP (or TLS), a bounded
// pool of connections, and the few commands hybrid sends (GETRANGE, SET …
// PX, EVALSHA and EVAL) as plain [Client.Do] calls.
//
// Why not github.com/redis/go-redis: it added 11.7 MB to the binary (4.2 MB
// of its own code, 13,176 functions) and 0.4 to 1.1 ms of CPU to every
// isolated task, each of which is one exec of this binary, for the handful
// of commands hybrid uses. This package is 30 KB of code: the binary went
// from 34.1 MB back to 22.8 MB. The same reason makes the project write its
// Prometheus metrics by hand (internal/promtext).
//
// # Mechanism
//
// A [Client] holds at most Options.PoolSize connections open, each with a
// bufio reader and writer. A call takes an idle connection, or dials one
// while fewer than PoolSize are open, or waits for either until its
// deadline. The call's deadline is the earlier of its context's and
// now + Options.Timeout; it bounds the wait, the dial (TLS, AUTH and SELECT
// included), the write and the read, being set on the net.Conn, so a
// Redis that accepts and never answers fails the call in Timeout. A
// context cancelled mid-call moves the connection's deadline to the past:
// the call returns at once.
//
// # Invariants
//
//   - At most PoolSize connections are open; a caller never waits past its
//     deadline for one.
//   - A connection that saw an I/O or protocol error (a reply too large, a
//     malformed one, a timeout, a cancellation) is closed, never pooled: its
//     stream may hold the rest of a reply. A Redis error reply (-ERR …) is
//     returned as *[Error], and its connection is pooled.
//   - A command is sent at most twice, and twice only when it failed on a
//     reused idle connection before any byte of a reply: the write failed
//     (the server has not the whole command, so did not run it), or the
//     read met EOF or ECONNRESET first (a connection the server closed
//     while it was idle: the server restarted, its idle timeout, a
//     proxy). The second try dials a fresh connection, within the same
//     deadline. No other failure is retried: the caller decides. (A
//     server that dies right after running a command, before replying,
//     looks like the idle case, so such a command may, rarely, run twice:
//     GETRANGE and SET … PX are idempotent; the rate limit's script would
//     count one request twice.)
//   - A reply is parsed within bounds: a line of at most 64 KiB, a bulk
//     string of at most Options.MaxReply bytes (and the bulk strings of one
//     reply together too), an array of at most Options.MaxArray elements,
//     arrays nested at most 4 deep. Memory grows with the bytes received,
//     never with a length the server announces.
//
// # Lifetimes and threading
//
// A Client is safe for concurrent use. The Value a call returns is the
// caller's: it shares no memory with the connection. The client does not
// log; its errors say what failed, and never hold a password (nor any
// argument but the command's name).
//
// Only RESP2 is spoken (no HELLO): replies are simple strings, errors,
// integers, bulk strings and arrays.
package resp
