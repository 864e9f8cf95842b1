// Package bench measures an HTTP server under load and reports what it saw.
//
// The line of data is: a [Target] (method, URL, headers, body) is sent by
// [Run] under [Options] — closed loop with a fixed number of connections, or
// open loop at a fixed rate — and every request ends in exactly one place in
// the [Result]: a status count (2xx, each other code) or an error kind
// (connect, timeout, closed, other, unsent). Latencies go into an HDR
// histogram (1 µs to 60 s, 3 significant digits), so p99.9 is exact to 0.1 %.
//
// Open loop measures from the intended send time, not the actual one: when
// the server stalls and every connection is busy, the requests that should
// have gone out meanwhile are sent late and their wait counts. A closed-loop
// tool hides a stall as one slow request ("coordinated omission"); this one
// does not.
//
// [Matrix] runs named workloads × modes × worker counts, each cell against a
// fresh `hybrid serve` that it starts, measures (CPU seconds of the whole
// process tree per request, the tree's peak RSS, from /proc) and stops by its
// pid. A [Report] holds every figure, round-trips through results.json, and
// renders as a terminal table, a comparison of two reports, and one
// self-contained report.html whose charts are inline SVG (no script, no
// network).
package bench
