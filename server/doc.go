// Package server is what every worker serves: a fasthttp server with read,
// write and idle timeouts, a body limit, health and readiness endpoints, and
// the project's one JSON error shape. It also holds the primary's small admin
// surface ([Admin]), built from the same router and error shape.
//
// # Error shape
//
// Every error response, on every endpoint, is
//
//	{"error":{"code":"not_found","message":"no route for \"GET\" \"/nope\""}}
//
// with the HTTP status that matches the code (see [Error]). Codes are stable
// identifiers for programs; messages are for people and may change.
//
// # Ending connections
//
// An early error response (413, 431, 400, 408) closes its connection by
// lingering: the write side is shut down and what the client still sends
// is read and discarded (at most 64 MiB, 10 s, 2 s without data), so that
// a client that writes its whole body before reading gets the response,
// not a reset. [Server.Shutdown] drains without failing a request: each
// keep-alive connection ends at a request boundary (Connection: close on
// its next response, or a close once idle for Config.DrainGrace with no
// request byte unread), and the connections already in the socket's accept
// queue are taken and served before the listener closes. conn.go has the
// mechanism and the reasons for the bounds.
//
// # Hostile input
//
// What a client can make a worker spend before any workload runs is
// bounded: an error never echoes the request (messages are fixed or name
// a value with [Quote], and are cut at [MaxMessage]); a request framed two
// ways, a path that changes meaning once decoded and a repeated query key
// are refused before routing (framing.go); request bodies draw on a
// per-worker budget (Config.MaxInflightBody, body.go); and connections on
// Config.MaxConns and Config.MaxConnsPerIP (conn.go).
//
// # Lifetimes
//
// A handler's *fasthttp.RequestCtx and every byte slice it returns are valid
// only until the handler returns (fasthttp#1205). Work that outlives the
// handler must copy what it needs first.
package server
