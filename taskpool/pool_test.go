package taskpool

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newPool(t testing.TB, size, queue int) *Pool {
	t.Helper()
	p, err := New(Config{Size: size, Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// fill occupies every run slot with a task blocked until release is closed.
func fill(t *testing.T, p *Pool, n int, release chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	started := make(chan struct{}, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Do(context.Background(), func(context.Context) error { started <- struct{}{}; <-release; return nil })
		}()
	}
	for range n {
		<-started
	}
	return &wg
}

func TestOverloadIsRefusedAtOnce(t *testing.T) {
	p := newPool(t, 2, 1)
	release := make(chan struct{})
	wg := fill(t, p, 2, release)
	queued := make(chan error, 1)
	go func() { queued <- p.Do(context.Background(), func(context.Context) error { return nil }) }()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })

	start := time.Now()
	err := p.Do(context.Background(), func(context.Context) error { t.Error("an overloaded task ran"); return nil })
	if !errors.Is(err, ErrOverloaded) {
		t.Fatalf("Do on a full pool = %v; want ErrOverloaded", err)
	}
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Errorf("refusal took %v; want it immediate", took)
	}
	close(release)
	wg.Wait()
	if err := <-queued; err != nil {
		t.Errorf("queued task = %v; want nil once slots freed", err)
	}
	if s := p.Stats(); s.Rejected != 1 || s.Completed != 3 || s.Running != 0 || s.Waiting != 0 {
		t.Errorf("stats = %+v; want 1 rejected, 3 completed, idle", s)
	}
}

func TestQueuedTaskPastDeadlineNeverRuns(t *testing.T) {
	p := newPool(t, 1, 4)
	release := make(chan struct{})
	wg := fill(t, p, 1, release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ran := false
	err := p.Do(ctx, func(context.Context) error { ran = true; return nil })
	close(release)
	wg.Wait()
	if !errors.Is(err, ErrDeadline) || ran {
		t.Errorf("Do past deadline = %v, ran %v; want ErrDeadline and never run", err, ran)
	}
	if s := p.Stats(); s.TimedOut != 1 || s.Waiting != 0 {
		t.Errorf("stats = %+v; want 1 timed out, none waiting", s)
	}
	// The slot it never took is still usable.
	if err := p.Do(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Do after a timeout = %v", err)
	}
}

func TestPanicIsTheCallersError(t *testing.T) {
	p := newPool(t, 1, 1)
	err := p.Do(context.Background(), func(context.Context) error { panic("bad input") })
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Value != "bad input" || len(pe.Stack) == 0 {
		t.Fatalf("Do of a panicking task = %v; want *PanicError with value and stack", err)
	}
	if err := p.Do(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Do after a panic = %v; want the pool to keep working", err)
	}
	if s := p.Stats(); s.Panicked != 1 || s.Running != 0 {
		t.Errorf("stats = %+v; want 1 panicked, none running", s)
	}
}

func TestQueueIsFIFO(t *testing.T) {
	p := newPool(t, 1, 8)
	release := make(chan struct{})
	wg := fill(t, p, 1, release)
	var mu sync.Mutex
	var order []int
	var done sync.WaitGroup
	for i := range 5 {
		done.Add(1)
		go func() {
			defer done.Done()
			p.Do(context.Background(), func(context.Context) error { mu.Lock(); order = append(order, i); mu.Unlock(); return nil })
		}()
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	close(release)
	wg.Wait()
	done.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("run order = %v; want 0..4", order)
		}
	}
}

func TestTuneGrowsAtRunTime(t *testing.T) {
	p := newPool(t, 1, 8)
	release := make(chan struct{})
	wg := fill(t, p, 1, release)
	started := make(chan struct{})
	go p.Do(context.Background(), func(context.Context) error { close(started); <-release; return nil })
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	if err := p.Tune(2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(2 * time.Second):
		t.Fatal("a waiting task did not start after Tune(2)")
	}
	if s := p.Stats(); s.Capacity != 2 || s.Running != 2 {
		t.Errorf("stats after Tune = %+v; want capacity 2, running 2", s)
	}
	close(release)
	wg.Wait()
	if err := p.Tune(0); err == nil {
		t.Error("Tune(0) = nil; want an error")
	}
}

func TestConcurrentUseStaysBounded(t *testing.T) {
	p := newPool(t, 2, 2)
	var running, peak int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+len(t.Name())%3)*time.Millisecond)
			defer cancel()
			p.Do(ctx, func(context.Context) error {
				mu.Lock()
				running++
				peak = max(peak, running)
				mu.Unlock()
				time.Sleep(100 * time.Microsecond)
				mu.Lock()
				running--
				mu.Unlock()
				return nil
			})
		}()
	}
	wg.Wait()
	s := p.Stats()
	if peak > 2 || s.Running != 0 || s.Waiting != 0 {
		t.Errorf("peak running %d, final %+v; want ≤ 2 and idle", peak, s)
	}
	if total := s.Completed + s.Rejected + s.TimedOut; total != 200 {
		t.Errorf("completed+rejected+timed out = %d; want 200 (every task accounted for)", total)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 2s")
		}
		time.Sleep(time.Millisecond)
	}
}

// The per-task cost of the pool against running inline and against a plain
// goroutine with a result channel, for an empty task and for sha256 of 64 KiB.
func BenchmarkOverhead(b *testing.B) {
	data := make([]byte, 64<<10)
	for _, work := range []struct {
		name string
		f    func(context.Context) error
	}{
		{"empty", func(context.Context) error { return nil }},
		{"sha256-64k", func(context.Context) error { sha256.Sum256(data); return nil }},
	} {
		b.Run(work.name+"/inline", func(b *testing.B) {
			for b.Loop() {
				work.f(context.Background())
			}
		})
		b.Run(work.name+"/goroutine", func(b *testing.B) {
			for b.Loop() {
				done := make(chan error, 1)
				go func() { done <- work.f(context.Background()) }()
				<-done
			}
		})
		b.Run(work.name+"/pool", func(b *testing.B) {
			p := newPool(b, 1, 4)
			for b.Loop() {
				if err := p.Do(context.Background(), work.f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestAdmissionByPredictedWait(t *testing.T) {
	p, err := New(Config{Size: 1, QueueWait: 100 * time.Millisecond, Queue: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	slow := p.Class("slow", 30*time.Millisecond)
	// The blocker's own class is estimated at nothing, so that no remaining
	// run time of it counts in the waits below, however long the test takes.
	blocker := p.Class("blocker", time.Nanosecond)
	release := make(chan struct{})
	go blocker.Do(context.Background(), func(context.Context) error { <-release; return nil })
	waitFor(t, func() bool { return p.Stats().Running == 1 })
	// The k-th queued task sees k-1 tasks of 30 ms ahead of it on one slot:
	// 0, 30, 60 and 90 ms are within 100 ms; the fifth would wait 120 ms.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); slow.Do(context.Background(), func(context.Context) error { return nil }) }()
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	err = slow.Do(context.Background(), func(context.Context) error { t.Error("a refused task ran"); return nil })
	var oe *OverloadError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOverloaded) || oe.Full {
		t.Fatalf("fifth queued task = %v; want an *OverloadError of the time bound", err)
	}
	if oe.Wait != 120*time.Millisecond || oe.Limit != 100*time.Millisecond || oe.RetryAfter() != time.Second {
		t.Errorf("refusal = wait %v, limit %v, retry after %v; want 120ms, 100ms, 1s", oe.Wait, oe.Limit, oe.RetryAfter())
	}
	// A cheaper class still fits behind the same queue: 4 × 30 ms = 120 ms is
	// the wait of any task now, so it is refused too, whatever its own cost.
	fast := p.Class("fast", time.Millisecond)
	if err := fast.Do(context.Background(), func(context.Context) error { return nil }); !errors.Is(err, ErrOverloaded) {
		t.Errorf("a cheap task behind 120 ms of queued work = %v; want ErrOverloaded", err)
	}
	if s := p.Stats(); s.PredictedWaitMS != 120 || s.QueueWaitMS != 100 || s.Rejected != 2 || s.RejectedFull != 0 {
		t.Errorf("stats = %+v; want predicted 120 ms, bound 100 ms, 2 rejected by time", s)
	}
	if !p.Saturated() {
		t.Error("Saturated() = false with 120 ms predicted against 100 ms; want true")
	}
	close(release)
	wg.Wait()
	if p.Saturated() {
		t.Error("Saturated() = true on an idle pool")
	}
}

func TestCountCapStillBinds(t *testing.T) {
	p, err := New(Config{Size: 1, QueueWait: time.Hour, Queue: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	release := make(chan struct{})
	wg := fill(t, p, 1, release)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); p.Do(context.Background(), func(context.Context) error { return nil }) }()
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	var oe *OverloadError
	if err := p.Do(context.Background(), func(context.Context) error { return nil }); !errors.As(err, &oe) || !oe.Full {
		t.Errorf("third queued task with Queue 2 = %v; want an *OverloadError of the count cap", err)
	}
	close(release)
	wg.Wait()
	if s := p.Stats(); s.RejectedFull != 1 {
		t.Errorf("stats = %+v; want 1 rejected by the count cap", s)
	}
}

func TestEstimateFollowsRunTimes(t *testing.T) {
	p := newPool(t, 1, 0)
	c := p.Class("sleep", time.Second)
	for range 30 {
		c.Do(context.Background(), func(context.Context) error { time.Sleep(5 * time.Millisecond); return nil })
	}
	var est float64
	for _, cs := range p.Stats().Classes {
		if cs.Name == "sleep" {
			est = cs.EstimateMS
		}
	}
	// From a 1 s seed, 30 tasks of ~5 ms leave 0.75^30 × 1 s ≈ 0.2 ms of the
	// seed; sleeping under -race on a busy box takes a little longer.
	if est < 5 || est > 30 {
		t.Errorf("estimate after 30 tasks of 5 ms = %.1f ms; want about 5", est)
	}
}

// A workload whose duration changes from fast to slow must change admission
// within a second, and back again.
func TestAdmissionFollowsAChangeOfDuration(t *testing.T) {
	p, err := New(Config{Size: 2, QueueWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	c := p.Class("changing", time.Millisecond)
	var dur atomic.Int64
	dur.Store(int64(time.Millisecond))
	var refused atomic.Int64
	lastRefusal := atomic.Int64{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 { // 14 waiting behind 2 running
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := c.Do(context.Background(), func(context.Context) error {
					time.Sleep(time.Duration(dur.Load()))
					return nil
				})
				if errors.Is(err, ErrOverloaded) {
					refused.Add(1)
					lastRefusal.Store(time.Now().UnixNano())
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	// Fast: 14 × ~1 ms ÷ 2 slots ≈ 7 ms of predicted wait: all admitted
	// (a stray refusal is tolerated: on a loaded machine a 1 ms sleep can
	// take tens, which the p99 forecast rightly counts).
	time.Sleep(500 * time.Millisecond)
	if n, done := refused.Load(), p.Stats().Completed; float64(n) > 0.005*float64(done) {
		t.Errorf("%d refusals in %d tasks at 1 ms per task; want none (predicted wait ≈ 7 ms, bound 100 ms)", n, done)
	}
	refused.Store(0)
	// Slow: 14 × 50 ms ÷ 2 = 350 ms: refusals within a second.
	dur.Store(int64(50 * time.Millisecond))
	switched := time.Now()
	for refused.Load() == 0 {
		if time.Since(switched) > time.Second {
			t.Fatalf("no refusal within 1s of the tasks going from 1 ms to 50 ms; stats %+v", p.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("fast → slow: first refusal after %v", time.Since(switched).Round(time.Millisecond))
	// Fast again: refusals stop within a second.
	dur.Store(int64(time.Millisecond))
	switched = time.Now()
	for {
		time.Sleep(100 * time.Millisecond)
		if quiet := time.Since(time.Unix(0, lastRefusal.Load())); quiet > 300*time.Millisecond {
			t.Logf("slow → fast: refusals stopped %v after the switch", (time.Since(switched) - quiet).Round(time.Millisecond))
			break
		}
		if time.Since(switched) > 1500*time.Millisecond {
			t.Fatalf("still refusing 1.5s after the tasks went back to 1 ms; stats %+v", p.Stats())
		}
	}
}

// AppendStats is Stats as encoding/json writes it, with no allocation.
func TestAppendStatsIsStatsJSON(t *testing.T) {
	p := newPool(t, 2, 0)
	p.Class("a", 3*time.Millisecond)
	p.Class("b <&>", 0).Do(context.Background(), func(context.Context) error { return nil })
	want, err := json.Marshal(p.Stats())
	if err != nil {
		t.Fatal(err)
	}
	if got := p.AppendStats(nil); string(got) != string(want) {
		t.Errorf("AppendStats =\n%s\nwant\n%s", got, want)
	}
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { buf = p.AppendStats(buf[:0]) }); n != 0 {
		t.Errorf("AppendStats: %v allocations; want 0", n)
	}
}

// The predicted wait is calibrated by the waits queued tasks really had:
// tasks that run longer than the estimates they were admitted on raise it,
// shorter ones lower it, within [biasMin, biasMax].
func TestPredictedWaitIsCalibratedByActualWaits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		seed     time.Duration
		run      time.Duration
		queued   int
		min, max float64
	}{
		// 11 ratios of ~4, clamped to 2 (the first forecast is under
		// biasFloor): 2 − 0.95^11.
		{"slower than admitted", 10 * time.Millisecond, 40 * time.Millisecond, 12, 1.3, 1.5},
		// 30 ratios of ~1/16, clamped to 0.5: 0.5 + 0.5 × 0.95^30.
		{"faster than admitted", 80 * time.Millisecond, 5 * time.Millisecond, 30, 0.55, 0.7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(Config{Size: 1, QueueWait: time.Minute, Queue: 100})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(context.Background())
			c := p.Class("k", tc.seed)
			// One running and the rest queued at once: each queued task's
			// forecast is made from the seed before any of them has run.
			release := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				c.Do(context.Background(), func(context.Context) error { <-release; time.Sleep(tc.run); return nil })
			})
			waitFor(t, func() bool { return p.Stats().Running == 1 })
			for i := range tc.queued {
				wg.Go(func() {
					c.Do(context.Background(), func(context.Context) error { time.Sleep(tc.run); return nil })
				})
				waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
			}
			close(release)
			wg.Wait()
			s := p.Stats()
			if s.WaitBias < tc.min || s.WaitBias > tc.max {
				t.Errorf("wait bias after tasks of %v admitted on estimates of %v = %.3f; want [%.2f, %.2f]",
					tc.run, tc.seed, s.WaitBias, tc.min, tc.max)
			}
			t.Logf("wait bias %.3f", s.WaitBias)
		})
	}
}

// The time a caller has spent already counts against the bound: a task
// whose predicted wait fits on its own is refused once its caller has
// waited the rest.
func TestTimeSpentCountsAgainstTheBound(t *testing.T) {
	p, err := New(Config{Size: 1, QueueWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	c := p.Class("k", 400*time.Millisecond)
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { c.Do(context.Background(), func(context.Context) error { <-release; return nil }) })
	free := sync.OnceFunc(func() { close(release) })
	defer func() { free(); wg.Wait() }()
	waitFor(t, func() bool { return p.Stats().Running == 1 })
	// Predicted wait ≈ 400 ms of the running task's estimate: within 1 s
	// for a fresh caller, not for one that waited 800 ms already.
	err = c.DoSince(context.Background(), time.Now().Add(-800*time.Millisecond), func(context.Context) error { return nil })
	var oe *OverloadError
	if !errors.As(err, &oe) || oe.Spent < 800*time.Millisecond || oe.RetryAfter() != time.Second {
		t.Fatalf("DoSince 800 ms ago = %v; want an OverloadError with Spent ≥ 800 ms and RetryAfter 1 s", err)
	}
	done := make(chan error, 1)
	go func() {
		done <- c.DoSince(context.Background(), time.Now(), func(context.Context) error { return nil })
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	free()
	if err := <-done; err != nil {
		t.Errorf("a fresh caller with the same predicted wait: %v; want it queued and run", err)
	}
}

// The predicted wait is an upper percentile: the mean of the work ahead
// plus waitZ standard deviations of it, from the run times' spread.
func TestPredictedWaitCoversTheSpread(t *testing.T) {
	p, err := New(Config{Size: 1, QueueWait: time.Minute, Queue: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	c := p.Class("k", 30*time.Millisecond)
	for i := range 40 { // one at a time: no queue, so no calibration
		d := 10 * time.Millisecond
		if i%2 == 1 {
			d = 50 * time.Millisecond
		}
		c.Do(context.Background(), func(context.Context) error { time.Sleep(d); return nil })
	}
	release := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(release); wg.Wait() }()
	wg.Go(func() { c.Do(context.Background(), func(context.Context) error { <-release; return nil }) })
	waitFor(t, func() bool { return p.Stats().Running == 1 })
	const n = 10
	for i := range n {
		wg.Go(func() { c.Do(context.Background(), func(context.Context) error { return nil }) })
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	s := p.Stats()
	est, spread := s.Classes[0].EstimateMS, s.Classes[0].SpreadMS
	if spread < 10 {
		t.Fatalf("spread of run times of 10 and 50 ms = %.1f ms; want about 20", spread)
	}
	sd := spread * math.Sqrt(n*(1+n*ewmaWeight/(2-ewmaWeight)))
	lo, hi := n*est+waitZ*sd, (n+1)*est+waitZ*sd // the running task's remainder is in [0, est]
	if s.PredictedWaitMS < lo-1 || s.PredictedWaitMS > hi+1 || s.WaitBias != 1 {
		t.Errorf("predicted wait %.1f ms (bias %.2f) with %d queued of %.1f ± %.1f ms; want [%.1f, %.1f] and bias 1",
			s.PredictedWaitMS, s.WaitBias, n, est, spread, lo, hi)
	}
	t.Logf("predicted wait %.1f ms: mean %.1f, %d queued of %.1f ± %.1f ms", s.PredictedWaitMS, n*est, n, est, spread)
}
