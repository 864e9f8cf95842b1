package main

import (
	"context"
	"errors"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/server"
)

// childJob is an isolate child's lookup: a workload of package handlers,
// run as inline runs it (its params and input checks, then its work; the
// input reaches no parser before this, in the child), its *server.Error
// carried to the parent as an *isolate.JobError. Test builds add the fault
// jobs (testhooks.go).
func childJob(name string) (isolate.Func, bool) {
	if f, ok := testJob(name); ok {
		return f, true
	}
	w, ok := handlers.Lookup(name)
	if !ok {
		return nil, false
	}
	return func(ctx context.Context, params map[string]string, input []byte) ([]byte, error) {
		p := handlers.Params(params)
		var err error
		if w.CheckParams != nil {
			err = w.CheckParams(p)
		}
		if err == nil && w.Check != nil {
			err = w.Check(p, input)
		}
		var out []byte
		if err == nil {
			out, err = w.Run(ctx, p, input)
		}
		var se *server.Error
		if errors.As(err, &se) {
			return nil, &isolate.JobError{Status: se.Status, Code: se.Code, Message: se.Message}
		}
		return out, err
	}, true
}
