//go:build !testhooks

package main

import (
	"log/slog"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
)

// The release build has no test hooks: no fault at start, no test route, no
// fault workload in isolated children, whatever the environment says. The
// test harness builds with -tags testhooks (testhooks.go).

type testHooks struct{ on bool }

func loadTestHooks(*procpool.Worker) (testHooks, error)       { return testHooks{}, nil }
func (testHooks) atStart(*slog.Logger) (code int, stop bool)  { return 0, false }
func (testHooks) heartbeats() bool                            { return true }
func (testHooks) register(*server.Router, *handlers.Executor) {}
func testRole(string) (code int, ok bool)                     { return 0, false }
func testJob(string) (isolate.Func, bool)                     { return nil, false }
