package handlers

import (
	"context"
	"sync"
	"time"
)

// deadlineCtx is a task's context: a deadline and the values of its parent,
// but not its parent's cancellation (see Executor.Run). It arms a timer only
// when Done is first called. Most tasks never call it: a pooled task that
// finds a free run slot, and a workload that checks ctx.Err() between
// chunks of work, need only the deadline's time, and a runtime timer per
// request (context.WithTimeout) was 1.7 % of a sha256 request's CPU.
type deadlineCtx struct {
	parent   context.Context
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{}
	timer *time.Timer
	ended bool // cancelled by its owner
}

// withDeadline returns a context whose deadline is d from now, and its
// cancel, which the caller must call when the task has ended.
func withDeadline(parent context.Context, d time.Duration) (*deadlineCtx, func()) {
	c := &deadlineCtx{parent: parent, deadline: time.Now().Add(d)}
	return c, c.cancel
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *deadlineCtx) Value(key any) any { return c.parent.Value(key) }

// Done is closed at the deadline, or when the owner cancels.
func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.ended {
			close(c.done)
		} else if wait := time.Until(c.deadline); wait <= 0 {
			close(c.done)
		} else {
			done := c.done
			c.timer = time.AfterFunc(wait, func() { close(done) })
		}
	}
	return c.done
}

// Err is context.DeadlineExceeded from the deadline on, context.Canceled
// once cancelled before it, and nil before either.
func (c *deadlineCtx) Err() error {
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return context.Canceled
	}
	return nil
}

func (c *deadlineCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if c.timer != nil && c.timer.Stop() {
		close(c.done) // the timer had not fired: close in its place
	} else if c.done != nil && c.timer == nil {
		select {
		case <-c.done:
		default:
			close(c.done)
		}
	}
}
