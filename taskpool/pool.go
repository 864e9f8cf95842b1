package taskpool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/ants/v2"
)

var (
	// ErrOverloaded means every run slot and every queue slot is taken: the
	// task was refused at once. HTTP: 503 with Retry-After.
	ErrOverloaded = errors.New("taskpool: overloaded")
	// ErrDeadline means the task's context ended while it waited: it never ran.
	// HTTP: 504.
	ErrDeadline = errors.New("taskpool: deadline passed while queued")
	// ErrClosed means the pool was closed.
	ErrClosed = errors.New("taskpool: closed")
)

// PanicError is a task's panic, returned to the one caller whose task it was.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("taskpool: task panicked: %v", e.Value) }

// Config sizes a pool. Zero fields take defaults.
type Config struct {
	// Size bounds the tasks running at once. Default: GOMAXPROCS.
	Size int
	// Queue bounds the tasks waiting for a run slot. Default: 4 × Size.
	Queue int
}

// Stats are a pool's counters, for /health and metrics.
type Stats struct {
	Capacity  int    `json:"capacity"`
	Queue     int    `json:"queue"`
	Running   int    `json:"running"`
	Waiting   int    `json:"waiting"`
	Completed uint64 `json:"completed"`
	Rejected  uint64 `json:"rejected"`
	TimedOut  uint64 `json:"timed_out"`
	Panicked  uint64 `json:"panicked"`
}

// Pool is a bounded task pool. Its methods are safe for concurrent use.
type Pool struct {
	ants *ants.Pool

	mu      sync.Mutex
	size    int
	queue   int
	running int
	waiters []chan struct{} // FIFO; closing one hands its owner a run slot
	closed  bool

	completed, rejected, timedOut, panicked atomic.Uint64
}

// New returns a pool; Close releases it.
func New(cfg Config) (*Pool, error) {
	if cfg.Size == 0 {
		cfg.Size = runtime.GOMAXPROCS(0)
	}
	if cfg.Queue == 0 {
		cfg.Queue = 4 * cfg.Size
	}
	if cfg.Size < 1 || cfg.Queue < 0 {
		return nil, fmt.Errorf("taskpool: size %d, queue %d: want size ≥ 1 and queue ≥ 0", cfg.Size, cfg.Queue)
	}
	// Blocking ants: admission already bounds submitters to Size, so a Submit
	// waits at most for a finishing worker to be put back.
	p, err := ants.NewPool(cfg.Size, ants.WithPreAlloc(false), ants.WithPanicHandler(func(any) {}))
	if err != nil {
		return nil, fmt.Errorf("taskpool: %w", err)
	}
	return &Pool{ants: p, size: cfg.Size, queue: cfg.Queue}, nil
}

// Do runs task on the pool and returns its error. It refuses at once with
// ErrOverloaded when the pool and its queue are full, and returns ErrDeadline
// if ctx ends before the task starts.
func (p *Pool) Do(ctx context.Context, task func(context.Context) error) error {
	if err := p.acquire(ctx); err != nil {
		return err
	}
	done := make(chan error, 1)
	err := p.ants.Submit(func() {
		err := p.run(ctx, task)
		p.release() // before the caller hears back, so its view of Stats is settled
		done <- err
	})
	if err != nil {
		p.release()
		if errors.Is(err, ants.ErrPoolClosed) {
			return ErrClosed
		}
		return fmt.Errorf("taskpool: submit: %w", err)
	}
	return <-done
}

func (p *Pool) run(ctx context.Context, task func(context.Context) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			p.panicked.Add(1)
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	err = task(ctx)
	p.completed.Add(1)
	return err
}

// acquire takes a run slot, waiting in the queue if there is room.
func (p *Pool) acquire(ctx context.Context) error {
	if ctx.Err() != nil {
		p.timedOut.Add(1)
		return ErrDeadline
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if p.running < p.size && len(p.waiters) == 0 {
		p.running++
		p.mu.Unlock()
		return nil
	}
	if len(p.waiters) >= p.queue {
		p.mu.Unlock()
		p.rejected.Add(1)
		return ErrOverloaded
	}
	ready := make(chan struct{})
	p.waiters = append(p.waiters, ready)
	p.mu.Unlock()

	select {
	case <-ready:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	for i, w := range p.waiters {
		if w == ready {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			p.timedOut.Add(1)
			return ErrDeadline
		}
	}
	p.mu.Unlock()
	// The slot was handed over just as ctx ended: give it back.
	p.release()
	p.timedOut.Add(1)
	return ErrDeadline
}

// release frees a run slot, handing it to the first waiter if any.
func (p *Pool) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.waiters) > 0 && p.running <= p.size {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		close(w) // the slot passes on; running is unchanged
		return
	}
	p.running--
}

// Tune changes the number of run slots at run time. Growing starts waiting
// tasks at once; shrinking lets running tasks finish. The queue keeps its
// size.
func (p *Pool) Tune(size int) error {
	if size < 1 {
		return fmt.Errorf("taskpool: tune to %d: want ≥ 1", size)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.size = size
	p.ants.Tune(size)
	for p.running < p.size && len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.running++
		close(w)
	}
	return nil
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Capacity: p.size, Queue: p.queue, Running: p.running, Waiting: len(p.waiters)}
	p.mu.Unlock()
	s.Completed, s.Rejected = p.completed.Load(), p.rejected.Load()
	s.TimedOut, s.Panicked = p.timedOut.Load(), p.panicked.Load()
	return s
}

// Close refuses new tasks and waits up to ctx for running ones.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	deadline, ok := ctx.Deadline()
	if !ok {
		p.ants.Release()
		return nil
	}
	return p.ants.ReleaseTimeout(max(0, time.Until(deadline)))
}
