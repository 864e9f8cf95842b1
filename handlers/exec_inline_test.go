package handlers

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/taskpool"
)

// An inline task that overruns its deadline is answered 504 at it, as a
// pooled one is, and runs on holding one of maxOverruns places until it
// returns; once they are all held, the next overrun waits for a place, so
// tasks no request waits for never pile up past a core's worth each.
func TestInlineOverrunAnsweredAtDeadline(t *testing.T) {
	const timeout = 100 * time.Millisecond
	e := &Executor{TaskTimeout: timeout}
	unblock := make(chan struct{})
	stubborn := &Workload{Name: "stubborn", Run: func(_ context.Context, _ Params, _ []byte) ([]byte, error) {
		<-unblock // ignores its context, as a KDF or the resampler does
		return []byte("late"), nil
	}}
	var released sync.WaitGroup
	run := func() (time.Duration, error) {
		released.Add(1)
		start := time.Now()
		_, err := e.run(start, stubborn, Inline, Params{}, nil, released.Done)
		return time.Since(start), err
	}
	// Generous bound on the 504's lateness: a goroutine's wake-up, on a
	// loaded 2-core box under the race detector.
	const late = 400 * time.Millisecond
	for i := range maxOverruns() {
		took, err := run()
		if !errors.Is(err, taskpool.ErrDeadline) || took > timeout+late {
			t.Fatalf("overrun %d: %v after %v; want ErrDeadline at %v", i, err, took, timeout)
		}
	}
	// Every place is held: the next overrun waits for one.
	type result struct {
		took time.Duration
		err  error
	}
	next := make(chan result, 1)
	go func() {
		took, err := run()
		next <- result{took, err}
	}()
	select {
	case r := <-next:
		t.Fatalf("with every place held, an overrun was answered after %v (%v); want it to wait", r.took, r.err)
	case <-time.After(timeout + late):
	}
	// A task that returns frees its place: the waiting one takes it and is
	// answered then. The rest return with it.
	close(unblock)
	r := <-next
	if r.err != nil && !errors.Is(r.err, taskpool.ErrDeadline) {
		t.Fatalf("the waiting overrun: %v", r.err)
	}
	// Each task released its input once it returned, not before.
	done := make(chan struct{})
	go func() { released.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a returned task never released its input")
	}
	// The places are free again: a task within its deadline is answered
	// with its own outcome.
	quick := &Workload{Name: "quick", Run: func(context.Context, Params, []byte) ([]byte, error) { return []byte("ok"), nil }}
	out, err := e.run(time.Now(), quick, Inline, Params{}, nil, func() {})
	if err != nil || string(out) != "ok" {
		t.Fatalf("a quick inline task: %q, %v", out, err)
	}
	if n := len(e.overrunSlots()); n != 0 {
		t.Errorf("%d overrun places still held after every task returned", n)
	}
}

// A panic in an inline task on its own goroutine is the caller's 500, not
// the worker's end.
func TestInlinePanicIsAnError(t *testing.T) {
	e := &Executor{TaskTimeout: time.Second}
	w := &Workload{Name: "panics", Run: func(context.Context, Params, []byte) ([]byte, error) { panic("boom") }}
	_, err := e.run(time.Now(), w, Inline, Params{}, nil, func() {})
	var pe *taskpool.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("a panicking inline task: %v; want a *taskpool.PanicError", err)
	}
}
