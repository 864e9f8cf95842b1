package handlers

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

func TestDeadlineCtx(t *testing.T) {
	parent, stop := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	ctx, cancel := withDeadline(parent, 50*time.Millisecond)
	defer cancel()
	stop() // the parent's cancellation does not reach a task
	if ctx.Err() != nil || ctx.Value(ctxKey{}) != "v" {
		t.Fatalf("fresh: Err %v, Value %v; want nil and the parent's value", ctx.Err(), ctx.Value(ctxKey{}))
	}
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > 50*time.Millisecond {
		t.Errorf("Deadline = %v, %v", d, ok)
	}
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Errorf("Err after the deadline = %v", ctx.Err())
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	// Err alone sees the deadline, with no timer armed; Done asked for
	// afterwards is closed, and a later cancel changes nothing.
	c2, cancel2 := withDeadline(context.Background(), time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if !errors.Is(c2.Err(), context.DeadlineExceeded) || c2.timer != nil {
		t.Errorf("Err past the deadline without Done = %v (timer %v)", c2.Err(), c2.timer)
	}
	select {
	case <-c2.Done():
	default:
		t.Error("Done open after Err reported the deadline")
	}
	cancel2()
	if !errors.Is(c2.Err(), context.DeadlineExceeded) {
		t.Errorf("Err after a late cancel = %v; want DeadlineExceeded for good", c2.Err())
	}
	// Err past the deadline closes a Done armed before it, timer pending or not.
	c3, cancel3 := withDeadline(context.Background(), 2*time.Millisecond)
	done := c3.Done()
	time.Sleep(5 * time.Millisecond)
	if c3.Err() == nil {
		t.Error("Err nil past the deadline")
	}
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Error("Done open after the deadline")
	}
	cancel3()
	// Cancel closes Done, before or after it was asked for, and is idempotent.
	for _, askFirst := range []bool{true, false} {
		c, cancel := withDeadline(context.Background(), time.Hour)
		if askFirst {
			c.Done()
		}
		cancel()
		cancel()
		select {
		case <-c.Done():
		default:
			t.Errorf("askFirst=%v: Done open after cancel", askFirst)
		}
		if !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("askFirst=%v: Err after cancel = %v", askFirst, c.Err())
		}
		if c.deadline = time.Now().Add(-time.Second); !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("askFirst=%v: Err after cancel, then the deadline = %v; want Canceled for good", askFirst, c.Err())
		}
	}
}
