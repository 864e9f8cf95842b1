// Package server is what every worker serves: a fasthttp server with read,
// write and idle timeouts, a body limit, health and readiness endpoints, and
// the project's one JSON error shape. It also holds the primary's small admin
// surface ([Admin]), built from the same router and error shape.
//
// # Error shape
//
// Every error response, on every endpoint, is
//
//	{"error":{"code":"not_found","message":"no route for GET /nope"}}
//
// with the HTTP status that matches the code (see [Error]). Codes are stable
// identifiers for programs; messages are for people and may change.
//
// # Lifetimes
//
// A handler's *fasthttp.RequestCtx and every byte slice it returns are valid
// only until the handler returns (fasthttp#1205). Work that outlives the
// handler must copy what it needs first.
package server
