package bench

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// faultyServer answers on a real loopback socket: every third request it
// sees gets 503, and stall(n) decides which requests sleep 200 ms first.
// It counts what it did, so a test can hold the client's figures to it.
type faultyServer struct {
	url                     string
	seen, unavailable, slow atomic.Int64
	stall                   func(n int64) bool
	srv                     *fasthttp.Server
	done                    sync.WaitGroup
}

const stallFor = 200 * time.Millisecond

func startFaulty(t *testing.T, stall func(n int64) bool) *faultyServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &faultyServer{url: "http://" + ln.Addr().String() + "/work", stall: stall}
	f.srv = &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		n := f.seen.Add(1) // 1-based arrival order
		if f.stall(n) {
			f.slow.Add(1)
			time.Sleep(stallFor)
		}
		if n%3 == 0 {
			f.unavailable.Add(1)
			ctx.Error(`{"error":{"code":"overloaded"}}`, fasthttp.StatusServiceUnavailable)
			return
		}
		ctx.SetBodyString("ok")
	}}
	f.done.Add(1)
	go func() { defer f.done.Done(); f.srv.Serve(ln) }()
	t.Cleanup(func() { f.srv.Shutdown(); f.done.Wait() })
	return f
}

func every(k int64) func(int64) bool { return func(n int64) bool { return n%k == 0 } }

func run(t *testing.T, url string, o Options) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Run(ctx, Target{Method: "GET", URL: url}, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Every request the server saw is in the client's counts, in the right
// place; the stalled ones, and only those, are slow.
func TestCountsMatchTheServer(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"closed loop", Options{Concurrency: 8, Requests: 300}},
		{"open loop", Options{Concurrency: 64, Rate: 300, Requests: 300}},
		{"new connection per request", Options{Concurrency: 4, Requests: 120, NewConn: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFaulty(t, every(10))
			r := run(t, f.url, tc.o)
			if r.Requests != tc.o.Requests || f.seen.Load() != tc.o.Requests {
				t.Fatalf("requests: client %d, server %d; want %d", r.Requests, f.seen.Load(), tc.o.Requests)
			}
			if got, want := r.Status["503"], f.unavailable.Load(); got != want || want != tc.o.Requests/3 {
				t.Errorf("503s: client %d, server %d; want %d", got, want, tc.o.Requests/3)
			}
			if got, want := r.OK, tc.o.Requests-f.unavailable.Load(); got != want || r.Status["200"] != want {
				t.Errorf("2xx: %d (status 200: %d); want %d", got, r.Status["200"], want)
			}
			if len(r.Errors) != 0 || r.Failed() != r.Status["503"] {
				t.Errorf("errors %v, failed %d; want none beyond the 503s", r.Errors, r.Failed())
			}
			if got, want := r.Histogram.CountOver(stallFor*3/4), f.slow.Load(); got != want {
				t.Errorf("latencies over %v: %d; want the %d stalled requests", stallFor*3/4, got, want)
			}
			l := r.Latency
			if !(l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Errorf("percentiles out of order: %+v", l)
			}
			if l.Max < float64(stallFor.Milliseconds()) || l.P50 >= float64(stallFor.Milliseconds())/2 {
				t.Errorf("latency %+v: want max ≥ %v (a stall) and p50 well under it", l, stallFor)
			}
		})
	}
}

// One 200 ms stall on one connection at 100 requests/s: a closed loop sees
// one slow request; the open loop also charges the 19 requests that should
// have gone out during the stall with their wait (190, 180, … 10 ms).
func TestOpenLoopCountsTheWaitBehindAStall(t *testing.T) {
	once := func(n int64) bool { return n == 20 }
	closed := run(t, startFaulty(t, once).url, Options{Concurrency: 1, Requests: 100})
	if got := closed.Histogram.CountOver(100 * time.Millisecond); got != 1 {
		t.Errorf("closed loop: %d latencies over 100ms; want the 1 stalled request", got)
	}
	open := run(t, startFaulty(t, once).url, Options{Concurrency: 1, Rate: 100, Requests: 100})
	// Requests 20…29 waited 200…110 ms and 20…34 more than 50 ms. Delay
	// can only add to a latency: a late timer, a sleep that overshoots, the
	// catch-up of the queued requests one after another on one connection,
	// all larger under -race with the other packages' tests on both cores.
	// Request 30 and 35 sit on the lines themselves, and CI saw 17 over
	// 50 ms: a 10 ms delay. Allow 40 ms (4 slots of 10 ms) of it. A
	// coordinated-omission bug gives 1; timing from the start of the run,
	// or a lost schedule, gives tens.
	const slack = 4
	if got := open.Histogram.CountOver(100 * time.Millisecond); got < 10 || got > 10+slack {
		t.Errorf("open loop: %d latencies over 100ms; want 10 (the stall and the 9 queued behind it), up to %d with scheduling delay", got, 10+slack)
	}
	if got := open.Histogram.CountOver(50 * time.Millisecond); got < 15 || got > 15+slack {
		t.Errorf("open loop: %d latencies over 50ms; want 15, up to %d with scheduling delay", got, 15+slack)
	}
	if open.Requests != 100 || open.Errors[ErrUnsent] != 0 {
		t.Errorf("open loop: %d sent, %d unsent; want 100, 0", open.Requests, open.Errors[ErrUnsent])
	}
}

// A server too slow for the schedule: the requests that were due but never
// went out are counted as unsent, not dropped.
func TestOpenLoopCountsUnsent(t *testing.T) {
	f := startFaulty(t, func(int64) bool { return true })
	r := run(t, f.url, Options{Concurrency: 2, Rate: 100, Duration: time.Second})
	if r.Requests+r.Errors[ErrUnsent] != 100 {
		t.Fatalf("sent %d + unsent %d; want the 100 due in 1s", r.Requests, r.Errors[ErrUnsent])
	}
	if r.Requests > 12 || r.Requests != f.seen.Load() {
		t.Errorf("sent %d, server saw %d; want at most 2 connections × 5 stalls (+ the last in flight)", r.Requests, f.seen.Load())
	}
	if r.Failed() != r.Errors[ErrUnsent]+r.Status["503"] {
		t.Errorf("failed %d; want unsent + 503s", r.Failed())
	}
}

func TestConnectionErrorsAreCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	r := run(t, "http://"+addr+"/", Options{Concurrency: 2, Requests: 10, Timeout: 2 * time.Second})
	if r.Errors[ErrConnect] != 10 || r.OK != 0 || r.Requests != 10 {
		t.Errorf("errors %v, ok %d, requests %d; want 10 connect errors", r.Errors, r.OK, r.Requests)
	}
}

func TestTimeoutsAreCounted(t *testing.T) {
	f := startFaulty(t, func(int64) bool { return true })
	r := run(t, f.url, Options{Concurrency: 2, Requests: 4, Timeout: 50 * time.Millisecond})
	if r.Errors[ErrTimeout] != 4 {
		t.Errorf("errors %v; want 4 timeouts", r.Errors)
	}
}

func TestWarmupIsNotCounted(t *testing.T) {
	f := startFaulty(t, func(int64) bool { return false })
	r := run(t, f.url, Options{Concurrency: 2, Requests: 50, Warmup: 200 * time.Millisecond})
	if r.Requests != 50 || f.seen.Load() <= 50 {
		t.Errorf("measured %d of %d seen; want 50 measured after a warm-up", r.Requests, f.seen.Load())
	}
}

func TestParseTarget(t *testing.T) {
	for _, good := range []string{"POST http://127.0.0.1:3000/v1/hash?algo=sha256", "get https://example.com/x"} {
		if _, err := ParseTarget(good); err != nil {
			t.Errorf("ParseTarget(%q): %v", good, err)
		}
	}
	for _, bad := range []string{"", "POST", "http://x/", "FETCH http://x/", "POST ftp://x/", "POST http:///nohost", "POST http://x/ extra"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q): want an error", bad)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{Concurrency: 0, Requests: 1},
		{Concurrency: 1},
		{Concurrency: 1, Requests: 1, Rate: -1},
		{Concurrency: 1, Duration: -time.Second},
	} {
		if o.Validate() == nil {
			t.Errorf("%+v: want an error", o)
		}
	}
}

// Latency is also kept per status. Every third request is a 503 and every
// sixth sleeps first, so half the 503s are slow and no 200 is (n%6 == 0
// implies n%3 == 0): the 200s' p99 is fast, the 503s' is the stall.
func TestLatencyByStatus(t *testing.T) {
	f := startFaulty(t, every(6))
	r := run(t, f.url, Options{Concurrency: 2, Requests: 120})
	ok, refused := r.LatencyByStatus["200"], r.LatencyByStatus["503"]
	if r.Status["200"] == 0 || r.Status["503"] == 0 {
		t.Fatalf("statuses %v; want 200s and 503s", r.Status)
	}
	if ok.P99 >= float64(stallFor.Milliseconds()) {
		t.Errorf("200s' p99 = %.1f ms; want them fast (no 200 sleeps)", ok.P99)
	}
	if refused.P99 < float64(stallFor.Milliseconds()) || refused.Min >= float64(stallFor.Milliseconds()) {
		t.Errorf("503s' min %.1f, p99 %.1f ms; want half of them at the %v stall", refused.Min, refused.P99, stallFor)
	}
}
