package taskpool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/internal/jsonw"
)

var (
	// ErrOverloaded means the task was refused at once: its predicted wait
	// exceeds the pool's QueueWait, or the queue holds Queue tasks already.
	// The error returned is an [*OverloadError] that matches it with
	// errors.Is and carries the predicted wait. HTTP: 503 with Retry-After.
	ErrOverloaded = errors.New("taskpool: overloaded")
	// ErrDeadline means the task's context ended while it waited: it never ran.
	// HTTP: 504.
	ErrDeadline = errors.New("taskpool: deadline passed while queued")
	// ErrClosed means the pool was closed.
	ErrClosed = errors.New("taskpool: closed")
)

// Defaults of [Config].
const (
	// DefaultQueueWait bounds the predicted wait of an admitted task: it
	// admits a burst of several seconds of work, as a client with a 10 s
	// timeout (imgproxy's default) still gets. A caller with a task
	// deadline should keep it well below that deadline (hybrid serve
	// defaults it to a third of --task-timeout).
	DefaultQueueWait = 10 * time.Second
	// DefaultQueue is the count cap on waiting tasks, under the time bound:
	// it keeps a flood of very cheap tasks from queueing without end (the
	// memory a queue holds is its tasks' inputs, so at most this many
	// times the largest input). At 1,024 it does not bind before the time
	// bound for any task of 10 ms or more per run slot (10 s ÷ 10 ms).
	DefaultQueue = 1024
	// DefaultEstimate seeds a class created without a seed.
	DefaultEstimate = time.Millisecond
)

// ewmaWeight is the weight of a new observation in a class's estimate. The
// estimate tracks the mean run time, which is what a sum of queued tasks
// costs; an asymmetric weight (rise fast, fall slowly) was tried and
// settled far above the mean for run times with a long tail (isolated
// tasks: a 56 ms estimate for a 11 ms mean), refusing at a fraction of the
// bound. At 0.25 the estimate covers 58 % of a step to a new run time in 3
// tasks and 90 % in 8.
const ewmaWeight = 0.25

// The predicted wait is the 99th percentile of the wait, not its mean: under
// overload nearly every admitted task is admitted at the bound, so a mean
// forecast would let half of them start past it. A class's estimate is an
// EWMA of its run times, and its spread an EWMA of their variance (same
// weight). The wait is the sum of the run times ahead ÷ the run slots, and
// the sum's variance has two parts: each queued task's own (n·σ²), and the
// estimate's error, shared by all n queued tasks of the class
// (n²·σ²·w/(2−w), the variance of an EWMA of weight w). The forecast adds
// waitZ standard deviations. The estimate's error dominates: with 85
// thumbnails queued per slot (10 s) and run times of 117 ± 20 ms, ±0.65 s
// against ±0.18 s.
//
// Both are then calibrated against the waits queued tasks really had,
// because run times under overload drift after admission (more uploads to
// read, more memory, cores shared with what a full queue costs), which no
// per-task figure foresees. Each task that waited for a slot compares its
// wait with the mean forecast it was admitted on. The EWMA of that ratio
// (biasWeight per task, each ratio clamped to [biasMin, biasMax], so one
// stalled task moves it by at most 5 %) scales the mean, and the ratio's
// own spread, times the mean, stands for the forecast's standard deviation
// where it is larger than the model's. Forecasts shorter than biasFloor are
// left out: their ratio is scheduling noise.
const (
	waitZ      = 2.33 // the 99th percentile of a normal distribution
	biasWeight = 0.05
	biasMin    = 0.5
	biasMax    = 2.0
	biasFloor  = 20 * time.Millisecond
)

// PanicError is a task's panic, returned to the one caller whose task it was.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("taskpool: task panicked: %v", e.Value) }

// OverloadError is a refusal: the wait the task would have had, and the
// bound it exceeded. It matches [ErrOverloaded].
type OverloadError struct {
	// Wait is the predicted wait before the task could start.
	Wait time.Duration
	// Limit is the pool's QueueWait.
	Limit time.Duration
	// Spent is how long the task's caller had waited already when it
	// asked ([Class.DoSince]); it counts against Limit with Wait.
	Spent time.Duration
	// Full is set when the count cap (Config.Queue) refused it, not the
	// time bound.
	Full bool
}

func (e *OverloadError) Error() string {
	if e.Full {
		return fmt.Sprintf("taskpool: overloaded: the queue is full (predicted wait %v)", e.Wait.Round(time.Millisecond))
	}
	if e.Spent > 0 {
		return fmt.Sprintf("taskpool: overloaded: predicted wait %v after %v spent exceeds %v",
			e.Wait.Round(time.Millisecond), e.Spent.Round(time.Millisecond), e.Limit)
	}
	return fmt.Sprintf("taskpool: overloaded: predicted wait %v exceeds %v", e.Wait.Round(time.Millisecond), e.Limit)
}

// Is makes errors.Is(err, ErrOverloaded) true.
func (e *OverloadError) Is(target error) bool { return target == ErrOverloaded }

// RetryAfter is when a retry may be admitted: the time until the work
// queued ahead fits the bound again, at least one second.
func (e *OverloadError) RetryAfter() time.Duration {
	return max(time.Second, e.Wait-e.Limit)
}

// Config sizes a pool. Zero fields take defaults.
type Config struct {
	// Size bounds the tasks running at once. Default: GOMAXPROCS.
	Size int
	// QueueWait bounds the predicted wait of an admitted task: the service
	// time of the tasks queued ahead of it, by their classes' estimates,
	// divided by Size. Default: [DefaultQueueWait].
	QueueWait time.Duration
	// Queue caps the tasks waiting for a run slot, whatever their predicted
	// wait: a memory bound. Default: [DefaultQueue].
	Queue int
}

// ClassStats is one class's estimate, for /health and metrics.
type ClassStats struct {
	Name       string  `json:"name"`
	EstimateMS float64 `json:"estimate_ms"`
	// SpreadMS is the standard deviation of the run times, by the same
	// EWMA.
	SpreadMS  float64 `json:"spread_ms"`
	Waiting   int     `json:"waiting"`
	Completed uint64  `json:"completed"`
}

// Stats are a pool's counters, for /health and metrics.
type Stats struct {
	Capacity int `json:"capacity"`
	Queue    int `json:"queue"`
	Running  int `json:"running"`
	Waiting  int `json:"waiting"`
	// QueueWaitMS is the admission bound; PredictedWaitMS the wait a task
	// arriving now would have.
	QueueWaitMS     float64 `json:"queue_wait_ms"`
	PredictedWaitMS float64 `json:"predicted_wait_ms"`
	// WaitBias is the calibration of the predicted wait's mean: queued
	// tasks' actual waits ÷ the sums of estimates they were admitted on.
	WaitBias float64 `json:"wait_bias"`
	// WaitBiasSpread is the standard deviation of that ratio.
	WaitBiasSpread float64 `json:"wait_bias_spread"`
	Completed      uint64  `json:"completed"`
	// Rejected counts every refusal; RejectedFull those of the count cap.
	Rejected     uint64       `json:"rejected"`
	RejectedFull uint64       `json:"rejected_full"`
	TimedOut     uint64       `json:"timed_out"`
	Panicked     uint64       `json:"panicked"`
	Classes      []ClassStats `json:"classes"`
}

// Class is a kind of task with its own service-time estimate: an
// exponentially weighted moving average of its tasks' run times, seeded
// when the class is made. Get one with [Pool.Class].
type Class struct {
	p    *Pool
	name string
	// Guarded by p.mu.
	estimate time.Duration
	variance float64 // of the run times, in ns²
	waiting  int

	completed atomic.Uint64
}

// ticket is one task's place: in the queue, then in a run slot.
type ticket struct {
	class *Class
	ready chan struct{} // closed when a run slot is handed to a queued ticket, or the pool closes
	err   error         // set before ready is closed if the pool closed instead
	start time.Time     // when it got its run slot

	queued   time.Time     // when it was queued
	forecast time.Duration // the mean (uncalibrated) work ahead it was admitted on, ÷ slots
}

// Pool is a bounded task pool. Its methods are safe for concurrent use.
type Pool struct {
	queueWait time.Duration
	queue     int
	def       func() *Class

	mu      sync.Mutex
	size    int
	running []*ticket // tasks holding a run slot; len ≤ size except after a shrinking Tune
	waiters []*ticket // FIFO; closing ready hands a run slot over
	classes []*Class
	bias    float64 // actual ÷ mean forecast wait, see waitZ
	biasVar float64 // its variance
	closed  bool
	idle    chan struct{} // made by Close; closed when the last running task ends

	completed, rejected, rejectedFull, timedOut, panicked atomic.Uint64
}

// Validate reports a field out of range (zero fields are the defaults).
func (c Config) Validate() error {
	if c.Size < 0 || c.Queue < 0 || c.QueueWait < 0 {
		return fmt.Errorf("taskpool: size %d, queue %d, queue wait %v: want size ≥ 1, queue ≥ 1, queue wait > 0 (or 0 for the defaults)",
			c.Size, c.Queue, c.QueueWait)
	}
	return nil
}

// New returns a pool; Close releases it.
func New(cfg Config) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Size == 0 {
		cfg.Size = runtime.GOMAXPROCS(0)
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.QueueWait == 0 {
		cfg.QueueWait = DefaultQueueWait
	}
	p := &Pool{size: cfg.Size, queue: cfg.Queue, queueWait: cfg.QueueWait, bias: 1}
	p.def = sync.OnceValue(func() *Class { return p.Class("default", DefaultEstimate) })
	return p, nil
}

// Class returns the class named name, making it with the estimate seed
// (DefaultEstimate when ≤ 0) the first time. A sensible seed matters for
// the first burst only: the estimate follows measured run times from the
// first completed task on.
func (p *Pool) Class(name string, seed time.Duration) *Class {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.classes {
		if c.name == name {
			return c
		}
	}
	if seed <= 0 {
		seed = DefaultEstimate
	}
	c := &Class{p: p, name: name, estimate: seed}
	p.classes = append(p.classes, c)
	return c
}

// Do runs task on the pool in the default class; see [Class.Do].
func (p *Pool) Do(ctx context.Context, task func(context.Context) error) error {
	return p.def().Do(ctx, task)
}

// Do runs task in one of c's pool's run slots and returns its error. It
// admits the task at once if a run slot is free, queues it if its predicted
// wait is within the pool's QueueWait and the queue has room, and otherwise
// refuses it at once with an [*OverloadError]. It returns ErrDeadline if ctx
// ends before the task starts.
//
// The task runs on the caller's goroutine, once it holds a slot: see the
// package doc for why there is no hand-off to a pool goroutine.
func (c *Class) Do(ctx context.Context, task func(context.Context) error) error {
	return c.DoSince(ctx, time.Time{}, task)
}

// DoSince is Do for a caller that has been waiting since since (a request,
// since its headers arrived: its upload came first): the time already
// spent counts against QueueWait, so that the bound holds for the whole
// wait before the task starts. A zero since is now.
func (c *Class) DoSince(ctx context.Context, since time.Time, task func(context.Context) error) error {
	p := c.p
	t, err := p.acquire(ctx, c, since)
	if err != nil {
		return err
	}
	err = p.run(ctx, task)
	p.release(t, true)
	return err
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

// acquire takes a run slot, waiting in the queue if admitted.
func (p *Pool) acquire(ctx context.Context, c *Class, since time.Time) (*ticket, error) {
	if ctx.Err() != nil {
		p.timedOut.Add(1)
		return nil, ErrDeadline
	}
	t := &ticket{class: c}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	now := time.Now()
	var spent time.Duration
	if !since.IsZero() {
		spent = max(0, now.Sub(since))
	}
	a := p.admitLocked(now, spent)
	if a.run {
		t.start = now
		p.running = append(p.running, t)
		p.mu.Unlock()
		return t, nil
	}
	if a.refused {
		p.mu.Unlock()
		p.rejected.Add(1)
		if a.full {
			p.rejectedFull.Add(1)
		}
		return nil, &OverloadError{Wait: a.wait, Spent: spent, Limit: p.queueWait, Full: a.full}
	}
	t.ready = make(chan struct{})
	t.queued, t.forecast = now, a.mean
	p.waiters = append(p.waiters, t)
	c.waiting++
	p.mu.Unlock()

	select {
	case <-t.ready:
		if t.err != nil {
			return nil, t.err
		}
		return t, nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	if i := slices.Index(p.waiters, t); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
		c.waiting--
		p.mu.Unlock()
		p.timedOut.Add(1)
		return nil, ErrDeadline
	}
	p.mu.Unlock()
	// The slot was handed over just as ctx ended: give it back.
	p.release(t, false)
	p.timedOut.Add(1)
	return nil, ErrDeadline
}

// predictLocked is the wait of a task queued now, at its 99th percentile
// (see waitZ): the work ahead of it, divided by the run slots. The work
// ahead is the estimated run time of every queued task, and what is left
// of each running task's estimate (none once it has run longer: how much
// longer it runs is unknown, and letting one slow task stand for every
// queued task of its class would let a single expensive request shut its
// workload out).
// It also returns the uncalibrated mean wait, which calibrates the next
// forecasts once the task has waited.
func (p *Pool) predictLocked(now time.Time) (wait, mean time.Duration) {
	work, variance := p.forecastLocked(now)
	sd := max(math.Sqrt(variance), float64(work)*math.Sqrt(p.biasVar))
	slots := float64(p.size)
	return time.Duration((float64(work)*p.bias + waitZ*sd) / slots), time.Duration(float64(work) / slots)
}

// forecastLocked is the mean of the work ahead, uncalibrated, and its
// variance in ns².
func (p *Pool) forecastLocked(now time.Time) (mean time.Duration, variance float64) {
	const estErr = ewmaWeight / (2 - ewmaWeight) // an EWMA's variance ÷ its samples'
	for _, c := range p.classes {
		n := float64(c.waiting)
		mean += time.Duration(c.waiting) * c.estimate
		variance += n * c.variance * (1 + n*estErr)
	}
	for _, r := range p.running {
		mean += max(0, r.class.estimate-now.Sub(r.start))
	}
	return mean, variance
}

// predicted is the predicted wait of a task arriving now, for the stats.
// The caller holds p.mu.
func (p *Pool) predicted() time.Duration {
	w, _ := p.predictLocked(time.Now())
	return w
}

// admission is admitLocked's decision for a task arriving now: it runs at
// once (run), or waits (neither), or is refused for its predicted wait or
// for a full queue (refused, and full for the latter). wait is the
// predicted wait, mean its uncalibrated mean.
type admission struct {
	run, refused, full bool
	wait, mean         time.Duration
}

// admitLocked is the admission rule, in one place, for a task whose caller
// has waited spent already.
func (p *Pool) admitLocked(now time.Time, spent time.Duration) admission {
	if len(p.running) < p.size && len(p.waiters) == 0 {
		return admission{run: true}
	}
	a := admission{full: len(p.waiters) >= p.queue}
	a.wait, a.mean = p.predictLocked(now)
	a.refused = a.full || spent+a.wait > p.queueWait
	return a
}

// release frees t's run slot, handing it to the first waiter if any. If
// the task ran, its run time feeds its class's estimate.
func (p *Pool) release(t *ticket, ran bool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := t.class; ran {
		// West's incremental EWMA of the mean and variance.
		diff := float64(now.Sub(t.start) - c.estimate)
		incr := ewmaWeight * diff
		c.estimate += time.Duration(incr)
		c.variance = (1 - ewmaWeight) * (c.variance + diff*incr)
		c.completed.Add(1)
	}
	if i := slices.Index(p.running, t); i >= 0 {
		p.running[i] = p.running[len(p.running)-1]
		p.running[len(p.running)-1] = nil
		p.running = p.running[:len(p.running)-1]
	}
	if len(p.waiters) > 0 && len(p.running) < p.size {
		p.startLocked(now)
	}
	if p.idle != nil && len(p.running) == 0 {
		close(p.idle)
		p.idle = nil
	}
}

// startLocked hands a run slot to the first waiter.
func (p *Pool) startLocked(now time.Time) {
	w := p.waiters[0]
	p.waiters[0] = nil
	p.waiters = p.waiters[1:]
	w.class.waiting--
	w.start = now
	if w.forecast >= biasFloor {
		r := min(biasMax, max(biasMin, float64(now.Sub(w.queued))/float64(w.forecast)))
		diff := r - p.bias
		incr := biasWeight * diff
		p.bias += incr
		p.biasVar = (1 - biasWeight) * (p.biasVar + diff*incr)
	}
	p.running = append(p.running, w)
	close(w.ready)
}

// Tune changes the number of run slots at run time. Growing starts waiting
// tasks at once; shrinking lets running tasks finish.
func (p *Pool) Tune(size int) error {
	if size < 1 {
		return fmt.Errorf("taskpool: tune to %d: want ≥ 1", size)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.size = size
	now := time.Now()
	for len(p.running) < p.size && len(p.waiters) > 0 {
		p.startLocked(now)
	}
	return nil
}

// Refuse returns the refusal a task arriving now would get, an
// [*OverloadError] counted as one, or nil if it would run or queue (no
// place is kept for it). A caller refuses with it before it has the task's
// input: a server, before it reads a request's body.
func (p *Pool) Refuse() error {
	p.mu.Lock()
	a := p.admitLocked(time.Now(), 0)
	p.mu.Unlock()
	if !a.refused {
		return nil
	}
	p.rejected.Add(1)
	if a.full {
		p.rejectedFull.Add(1)
	}
	return &OverloadError{Wait: a.wait, Limit: p.queueWait, Full: a.full}
}

// Saturated reports whether a task arriving now would be refused: its
// predicted wait is over QueueWait, or the queue is full. A worker tells its
// peers (procpool's accept board), so that new connections go elsewhere.
func (p *Pool) Saturated() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.admitLocked(time.Now(), 0).refused
}

// Stats returns the pool's counters and estimates.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Capacity: p.size, Queue: p.queue, Running: len(p.running), Waiting: len(p.waiters),
		QueueWaitMS: ms(p.queueWait), PredictedWaitMS: ms(p.predicted()), WaitBias: p.bias, WaitBiasSpread: math.Sqrt(p.biasVar),
		Classes: make([]ClassStats, len(p.classes))}
	for i, c := range p.classes {
		s.Classes[i] = ClassStats{Name: c.name, EstimateMS: ms(c.estimate), SpreadMS: c.spreadMS(), Waiting: c.waiting, Completed: c.completed.Load()}
	}
	p.mu.Unlock()
	s.Completed, s.Rejected, s.RejectedFull = p.completed.Load(), p.rejected.Load(), p.rejectedFull.Load()
	s.TimedOut, s.Panicked = p.timedOut.Load(), p.panicked.Load()
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (c *Class) spreadMS() float64 { return ms(time.Duration(math.Sqrt(c.variance))) }

// Close refuses new tasks, fails the queued ones with ErrClosed, and waits
// up to ctx for the running ones to end.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	for _, w := range p.waiters {
		w.class.waiting--
		w.err = ErrClosed
		close(w.ready)
	}
	p.waiters = nil
	if len(p.running) == 0 {
		p.mu.Unlock()
		return nil
	}
	if p.idle == nil {
		p.idle = make(chan struct{})
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("taskpool: close: tasks still running: %w", ctx.Err())
	}
}

// AppendStats appends Stats() as JSON, as encoding/json writes it, without
// allocating: GET /health serves it on every call.
func (p *Pool) AppendStats(b []byte) []byte {
	p.mu.Lock()
	o := jsonw.Open(b)
	o.Int("capacity", int64(p.size))
	o.Int("queue", int64(p.queue))
	o.Int("running", int64(len(p.running)))
	o.Int("waiting", int64(len(p.waiters)))
	o.Float("queue_wait_ms", ms(p.queueWait))
	o.Float("predicted_wait_ms", ms(p.predicted()))
	o.Float("wait_bias", p.bias)
	o.Float("wait_bias_spread", math.Sqrt(p.biasVar))
	o.Uint("completed", p.completed.Load())
	o.Uint("rejected", p.rejected.Load())
	o.Uint("rejected_full", p.rejectedFull.Load())
	o.Uint("timed_out", p.timedOut.Load())
	o.Uint("panicked", p.panicked.Load())
	o.Key("classes")
	o.B = append(o.B, '[')
	for i, c := range p.classes {
		if i > 0 {
			o.B = append(o.B, ',')
		}
		co := jsonw.Open(o.B)
		co.String("name", c.name)
		co.Float("estimate_ms", ms(c.estimate))
		co.Float("spread_ms", c.spreadMS())
		co.Int("waiting", int64(c.waiting))
		co.Uint("completed", c.completed.Load())
		o.B = co.Close()
	}
	o.B = append(o.B, ']')
	p.mu.Unlock()
	return o.Close()
}
