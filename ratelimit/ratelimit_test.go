package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/redistest"
	"github.com/hybrid-server/hybrid/internal/resp"
)

func TestParseRule(t *testing.T) {
	for s, want := range map[string]Rule{
		"100/min": {Count: 100, Period: time.Minute}, "5/s": {Count: 5, Period: time.Second},
		"1/hour": {Count: 1, Period: time.Hour}, "10/day": {Count: 10, Period: 24 * time.Hour},
		"3/10s": {Count: 3, Period: 10 * time.Second},
	} {
		if got, err := ParseRule(s); err != nil || got != want {
			t.Errorf("ParseRule(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "100", "0/min", "-1/min", "x/min", "100/fortnight", "100/0s", "100/500ms",
		"2000000/min", "1/9000h"} {
		if r, err := ParseRule(s); err == nil {
			t.Errorf("ParseRule(%q) = %+v; want an error", s, r)
		}
	}
}

// The formula of the package doc, on a simulated clock: a client sending
// as fast as it can over d gets Burst + ⌊d/T⌋ (+1 at most at the edge).
func TestGCRAFormula(t *testing.T) {
	for _, r := range []Rule{{Count: 100, Period: time.Minute}, {Count: 10, Period: time.Second, Burst: 3},
		{Count: 1, Period: time.Hour}} {
		tab := newTestTable(t, 0)
		interval, _ := r.ns()
		start := int64(1e12)
		for _, d := range []time.Duration{0, time.Second, 90 * time.Second, 3 * time.Hour} {
			tab2 := newTestTable(t, 0)
			// At every tenth of an interval over d, as many as admitted.
			allowed := 0
			step := max(interval/10, 1)
			for now := start; now <= start+int64(d); now += step {
				for tab2.allowAt("c", r, now).Allowed {
					allowed++
				}
			}
			lo := r.burst() + int(int64(d)/interval)
			if allowed < lo || allowed > lo+1 {
				t.Errorf("%v over %v: %d allowed; want %d (+1)", r, d, allowed, lo)
			}
		}
		// Refused answers say when to come back, and it is true.
		for tab.allowAt("x", r, start).Allowed {
		}
		d := tab.allowAt("x", r, start)
		if d.Allowed || d.RetryAfter <= 0 || d.Remaining != 0 {
			t.Fatalf("%v: exhausted: %+v", r, d)
		}
		if tab.allowAt("x", r, start+int64(d.RetryAfter)-1).Allowed || !tab.allowAt("x", r, start+int64(d.RetryAfter)).Allowed {
			t.Errorf("%v: RetryAfter %v is not when the next is admitted", r, d.RetryAfter)
		}
	}
}

func newTestTable(t testing.TB, slots int) *Table {
	tab, err := NewTable(slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab
}

// Many processes on one table admit exactly Burst of a 100/hour rule (T is
// 36 s: nothing refills while the test runs), whichever decides.
func TestTableExactAcrossProcesses(t *testing.T) {
	tab := newTestTable(t, 0)
	const procs, each = 4, 150
	var cmds []*exec.Cmd
	var outs []*os.File
	for range procs {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "RATELIMIT_HELPER=hammer", "RATELIMIT_N="+strconv.Itoa(each))
		cmd.ExtraFiles = []*os.File{tab.File(), w}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		cmds, outs = append(cmds, cmd), append(outs, r)
	}
	// This process decides too, at the same time.
	var mine atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range each {
				if tab.Allow("client", hourly).Allowed {
					mine.Add(1)
				}
			}
		})
	}
	wg.Wait()
	total := int(mine.Load())
	for i, cmd := range cmds {
		var n int
		if _, err := fmt.Fscan(outs[i], &n); err != nil {
			t.Fatalf("helper %d: %v", i, err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v", i, err)
		}
		total += n
	}
	if total != 100 {
		t.Errorf("%d processes and this one, %d tries: %d admitted; want exactly 100", procs, (procs+4)*each, total)
	}
	if e := tab.Evictions(); e != 0 {
		t.Errorf("%d evictions", e)
	}
}

var hourly = Rule{Count: 100, Period: time.Hour}

func TestHelperProcess(t *testing.T) {
	switch os.Getenv("RATELIMIT_HELPER") {
	case "":
		t.Skip("a helper process of TestTableExactAcrossProcesses")
	case "hammer":
		tab, err := OpenTable(os.NewFile(3, "table"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		n, _ := strconv.Atoi(os.Getenv("RATELIMIT_N"))
		var allowed atomic.Int64
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range n / 4 {
					if tab.Allow("client", hourly).Allowed {
						allowed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		fmt.Fprintln(os.NewFile(4, "out"), allowed.Load())
		os.Exit(0)
	case "hold":
		// Take a bucket's lock and die holding it, as kill -9 would leave it.
		tab, err := OpenTable(os.NewFile(3, "table"))
		if err != nil {
			os.Exit(2)
		}
		k := tab.hash("client")
		tab.lock(bucketSize * (1 + k%tab.buckets))
		os.Exit(0)
	}
}

// A process that died holding a bucket's lock does not stop the others: the
// lock is taken from it after lockStale.
func TestTableLockOfDeadHolder(t *testing.T) {
	tab := newTestTable(t, 0)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "RATELIMIT_HELPER=hold")
	cmd.ExtraFiles = []*os.File{tab.File()}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v %s", err, out)
	}
	k := tab.hash("client")
	if tab.word(bucketSize*(1+k%tab.buckets)).Load() != uint64(cmd.Process.Pid) {
		t.Fatal("the helper did not leave its lock held")
	}
	done := make(chan Decision, 1)
	go func() { done <- tab.Allow("client", hourly) }()
	select {
	case d := <-done:
		if !d.Allowed {
			t.Errorf("first request refused: %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Allow still waits for a dead process's lock after 5 s")
	}
}

// A full bucket forgets the client closest to expiry, counted; clients
// whose state has expired are reused without counting.
func TestTableEviction(t *testing.T) {
	tab := newTestTable(t, bucketSlots) // one bucket: every client shares it
	r := Rule{Count: 2, Period: time.Hour}
	now := int64(1e12)
	for i := range bucketSlots {
		tab.allowAt(fmt.Sprint("c", i), r, now)
	}
	if e := tab.Evictions(); e != 0 {
		t.Fatalf("%d evictions with the bucket not yet full", e)
	}
	// c0 is exhausted, the others have one left.
	tab.allowAt("c0", r, now)
	if tab.allowAt("c0", r, now).Allowed {
		t.Fatal("c0 admitted a third time")
	}
	tab.allowAt("new", r, now+1)
	if e := tab.Evictions(); e != 1 {
		t.Fatalf("evictions %d; want 1", e)
	}
	if tab.allowAt("c0", r, now+2).Allowed {
		t.Error("the exhausted c0 was the one forgotten; want the one with most allowance left")
	}
	// After the period every state is expired: reused, not evicted.
	later := now + int64(2*time.Hour)
	for i := range 3 * bucketSlots {
		tab.allowAt(fmt.Sprint("d", i), r, later+int64(i)*int64(time.Hour))
	}
	if e := tab.Evictions(); e != 1 {
		t.Errorf("evictions %d after reusing expired slots; want still 1", e)
	}
}

func TestOpenTableRefusesOtherFiles(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(4 * bucketSize)
	if _, err := OpenTable(f); err == nil {
		t.Error("OpenTable of a zero file: no error")
	}
}

func newRedis(t *testing.T) (*redistest.Server, *resp.Client) {
	s := redistest.Start(t)
	return s, newRedisClient(t, s)
}

func newRedisClient(t *testing.T, s *redistest.Server) *resp.Client {
	opt, err := resp.ParseURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	opt.Timeout = 2 * time.Second
	rdb := resp.New(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Many clients of one Redis, as many hosts would be: exactly 100 of a
// 100/hour rule, and the key expires with the state.
func TestRedisExact(t *testing.T) {
	s := redistest.Start(t)
	var limiters []*Redis
	for range 3 { // three hosts
		limiters = append(limiters, NewRedis(newRedisClient(t, s), RedisConfig{Timeout: 2 * time.Second}))
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			for range 25 {
				d, err := limiters[i%3].Allow(context.Background(), "client", hourly)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 100 {
		t.Errorf("300 tries through 3 clients: %d admitted; want exactly 100", allowed.Load())
	}
	d, _ := limiters[0].Allow(context.Background(), "client", hourly)
	if d.Allowed || d.RetryAfter < 35*time.Second || d.RetryAfter > 36*time.Second || d.Reset < 59*time.Minute {
		t.Errorf("the 301st: %+v; want refused, retry in ~36 s, reset in ~1 h", d)
	}
	ttl, err := s.Do("PTTL", "hybrid:rl:client")
	if ms, _ := strconv.Atoi(ttl[1:]); err != nil || ms < 59*60*1000 || ms > 3600*1000+2 {
		t.Errorf("PTTL %q, %v; want about an hour", ttl, err)
	}
}

// Redis down: every decision errs within its timeout, wrapping
// ErrUnavailable; back up (empty: without the script), the first decision
// works.
func TestRedisDown(t *testing.T) {
	s, rdb := newRedis(t)
	l := NewRedis(rdb, RedisConfig{Timeout: 200 * time.Millisecond})
	if _, err := l.Allow(context.Background(), "c", hourly); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	for range 3 {
		start := time.Now()
		_, err := l.Allow(context.Background(), "c", hourly)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Redis down: %v; want ErrUnavailable", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Redis down: the decision took %v; want about the 200 ms timeout", took)
		}
	}
	s.Restart()
	if d, err := l.Allow(context.Background(), "c", hourly); err != nil || !d.Allowed {
		t.Errorf("the first decision after a restart (empty) = %+v, %v; want allowed", d, err)
	}
}

// doerFunc is a fake Redis.
type doerFunc func(args ...any) (resp.Value, error)

func (f doerFunc) Do(_ context.Context, args ...any) (resp.Value, error) { return f(args...) }

// A script's reply of the wrong shape is ErrUnavailable, never a decision.
func TestRedisBadReply(t *testing.T) {
	for _, v := range []resp.Value{
		{Kind: '*', Array: []resp.Value{{Kind: ':', Int: 1}, {Kind: ':', Int: 2}}},
		{Kind: '*', Array: []resp.Value{{Kind: ':', Int: 1}, {Kind: '$', Str: []byte("2")}, {Kind: ':', Int: 3}}},
		{Kind: '$', Null: true},
	} {
		l := NewRedis(doerFunc(func(...any) (resp.Value, error) { return v, nil }), RedisConfig{})
		if d, err := l.Allow(context.Background(), "c", hourly); !errors.Is(err, ErrUnavailable) {
			t.Errorf("the script answering %+v: %+v, %v; want ErrUnavailable", v, d, err)
		}
	}
}

func BenchmarkTableAllow(b *testing.B) {
	tab := newTestTable(b, 0)
	r := Rule{Count: 1_000_000, Period: time.Second}
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprint("10.0.", i/256, ".", i%256)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tab.Allow(ids[i%len(ids)], r)
	}
}
