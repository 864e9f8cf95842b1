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
	done  chan struct{} // made by the first Done
	timer *time.Timer   // armed by the first Done before the deadline
	err   error         // the first of DeadlineExceeded and Canceled, for good
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
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	c.expireLocked()
	if c.err != nil {
		close(c.done)
		return c.done
	}
	c.timer = time.AfterFunc(time.Until(c.deadline), func() {
		c.mu.Lock()
		c.endLocked(context.DeadlineExceeded)
		c.mu.Unlock()
	})
	return c.done
}

// Err is nil until the deadline or a cancel, then the first of
// context.DeadlineExceeded and context.Canceled for good; once it is not
// nil, Done is closed (if it was ever asked for).
func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	return c.err
}

func (c *deadlineCtx) cancel() {
	c.mu.Lock()
	c.endLocked(context.Canceled)
	c.mu.Unlock()
}

// expireLocked ends c if its deadline has passed.
func (c *deadlineCtx) expireLocked() {
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
}

// endLocked records err unless c has ended already, and closes Done.
func (c *deadlineCtx) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.done != nil {
		close(c.done)
	}
}
