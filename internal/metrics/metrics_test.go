package metrics

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/promtext"
	"github.com/hybrid-server/hybrid/procpool"
)

func TestRecordDoesNotAllocate(t *testing.T) {
	rt := new(Requests).Route("/v1/hash/")
	post := []byte("POST")
	if n := testing.AllocsPerRun(1000, func() { rt.Record(post, 200, ModePool, 3*time.Millisecond) }); n != 0 {
		t.Errorf("Record: %v allocations per call; want 0", n)
	}
}

func TestRecordBucketsAndOverflow(t *testing.T) {
	rt := new(Requests).Route("/r")
	rt.Record([]byte("BREW"), 418, ModeNone, 500*time.Microsecond) // le=0.0005 is inclusive
	rt.Record([]byte("GET"), 200, ModeInline, time.Minute)         // +Inf
	var snap Snapshot
	rt.appendTo(&snap)
	got := map[string]float64{}
	for _, s := range snap.Series {
		got[fmt.Sprint(s.Name, s.Labels)] = s.Value
		if s.Name == "hybrid_http_request_duration_seconds" {
			want := 0
			if s.Labels[1] == "inline" {
				want = len(Bounds)
			}
			if s.Counts[want] != 1 {
				t.Errorf("%v: counts %v; want one in bucket %d", s.Labels, s.Counts, want)
			}
		}
	}
	if got["hybrid_http_requests_total[method OTHER mode  route /r status 418]"] != 1 ||
		got["hybrid_http_requests_total[method GET mode inline route /r status 200]"] != 1 {
		t.Errorf("series: %v", got)
	}
	for st := range 2 * routeSlots {
		rt.Record([]byte("GET"), 100+st, ModeNone, 0)
	}
	// 100 to 100+2*routeSlots-1: the first routeSlots-2 take the free
	// slots, the rest fold by class.
	var want [nClasses]uint64
	for st := 100 + routeSlots - 2; st < 100+2*routeSlots; st++ {
		want[statusClass(st)]++
	}
	if n1, n2 := rt.folded[1].Load(), rt.folded[2].Load(); n1 != want[1] || n2 != want[2] || n1+n2 != routeSlots+2 {
		t.Errorf("%d combinations on one route: %d folded as 1xx, %d as 2xx; want %d and %d (%d slots, 2 of them taken before)",
			2*routeSlots, n1, n2, want[1], want[2], routeSlots)
	}
	for _, st := range []int{0, 99, 600, 999} {
		rt.Record([]byte("GET"), st, ModeNone, 0)
	}
	if n := rt.folded[0].Load(); n != 4 {
		t.Errorf("statuses outside 100-599 past the budget: %d folded as \"other\"; want 4", n)
	}
}

func TestStatusClass(t *testing.T) {
	for st, want := range map[int]string{-1: "other", 0: "other", 99: "other", 100: "1xx", 199: "1xx", 200: "2xx", 304: "3xx",
		404: "4xx", 499: "4xx", 500: "5xx", 503: "5xx", 599: "5xx", 600: "other", 999: "other"} {
		if got := classNames[statusClass(st)]; got != want {
			t.Errorf("status %d folds as %q; want %q", st, got, want)
		}
	}
	for _, st := range classNames {
		if !IsFoldedStatus(st) {
			t.Errorf("IsFoldedStatus(%q) = false", st)
		}
	}
	for _, st := range []string{"0", "200", "503", "5XX", ""} {
		if IsFoldedStatus(st) {
			t.Errorf("IsFoldedStatus(%q) = true", st)
		}
	}
	if want := fmt.Sprintf(" its %d combinations (%d on one route)", MaxSeries, routeSlots); !strings.Contains(catalog["hybrid_http_requests_total"].help, want) {
		t.Errorf("hybrid_http_requests_total's help does not say %q", want)
	}
}

// A worker's combinations are bounded over all its routes: past MaxSeries
// a request is folded into its route's series of its status class, and
// every request is still counted once.
func TestSeriesBudgetFoldsAndCountsAll(t *testing.T) {
	var r Requests
	var recorded float64
	statuses := []int{0, 101, 200, 201, 204, 302, 304, 400, 404, 405, 413, 500, 503, 504, 600}
	byClass := map[string]float64{} // recorded, by class
	for i := range 8 {
		rt := r.Route(fmt.Sprintf("/route%d/", i))
		for _, m := range methods {
			for _, st := range statuses {
				rt.Record([]byte(m), st, ModePool, time.Millisecond)
				recorded++
				byClass[classNames[statusClass(st)]]++
			}
		}
	}
	var snap Snapshot
	r.AppendTo(&snap)
	var total float64
	apart := 0
	for _, s := range snap.Series {
		if s.Name != "hybrid_http_requests_total" {
			continue
		}
		total += s.Value
		if !IsFoldedStatus(s.Labels[7]) {
			apart++
			byClass[classNames[statusClass(atoi(t, s.Labels[7]))]] -= s.Value
		} else if s.Labels[1] != "OTHER" || s.Labels[3] != "" {
			t.Errorf("a folded series %v; want method OTHER and mode \"\"", s.Labels)
		} else {
			byClass[s.Labels[7]] -= s.Value
		}
	}
	if apart != MaxSeries {
		t.Errorf("%d series counted apart; want MaxSeries (%d)", apart, MaxSeries)
	}
	if total != recorded || snap.Folded() != recorded-MaxSeries {
		t.Errorf("requests_total sums to %v, %v of them folded; want %v, %v folded", total, snap.Folded(), recorded, recorded-MaxSeries)
	}
	for c, n := range byClass {
		if n != 0 {
			t.Errorf("class %s: %v more requests recorded than counted (apart and folded)", c, n)
		}
	}
	if got := r.series.Load(); got != MaxSeries {
		t.Errorf("budget taken %d; want %d", got, MaxSeries)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("status %q: %v", s, err)
	}
	return n
}

// The largest snapshot a worker can send fits a heartbeat, or the primary
// would drop it and that worker's counters would freeze: every series of
// the budget taken with counts of 10^12, every route's 6 folded series
// (1xx to 5xx and "other") with 10^12, its histograms in every mode with
// 10^10 in every bucket (10^13 requests: 3 years at 100k/s), on 16 routes
// (the binary has 10, 14 with the test hooks) with patterns longer than
// any of them, the longest method and mode, 3-digit statuses, plus the
// rest of a worker's snapshot (gauges, pools, isolate outcomes, access and
// cache: 44 series in cmd/hybrid/metrics.go, 48 here). It must fit with
// 2 KiB to spare.
func TestWorstSnapshotFitsAHeartbeat(t *testing.T) {
	var r Requests
	var routes []*Route
	for i := range 16 {
		routes = append(routes, r.Route(fmt.Sprintf("/v1/a-long-pattern-%02d/", i)))
	}
	// Distinct combinations until the budget is spent; a budget that never
	// is (reserve not counting, MaxSeries over what 16 routes hold) fails
	// here rather than looping for ever.
	for i := 0; r.series.Load() < MaxSeries; i++ {
		if i >= len(routes)*routeSlots*4 {
			t.Fatalf("%d distinct combinations recorded and the budget is still not spent (%d of MaxSeries %d)", i, r.series.Load(), MaxSeries)
		}
		routes[i%len(routes)].Record([]byte("OPTIONS"), 100+i%900, ModeIsolate, 0)
	}
	const huge = 1e12
	for _, rt := range routes {
		for i := range rt.slots {
			if rt.slots[i].key.Load() != 0 {
				rt.slots[i].n.Store(huge)
			}
		}
		for c := range rt.folded {
			rt.folded[c].Store(huge)
		}
		for m := range nModes {
			for b := range rt.hist[m].counts {
				rt.hist[m].counts[b].Store(1e10)
			}
			rt.hist[m].sumNS.Store(1 << 62)
		}
	}
	snap := &Snapshot{V: SnapshotVersion}
	r.AppendTo(snap)
	for i := range 48 {
		snap.Add(fmt.Sprintf("hybrid_a_family_name_%02d_total", i), huge, "outcome", "redis_failed_closed")
	}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the worst snapshot: %d series, %d bytes", len(snap.Series), len(b))
	if want := MaxSeries + len(routes)*(nClasses+int(nModes)) + 48; len(snap.Series) != want {
		t.Errorf("the worst snapshot has %d series; want %d (the budget, every folded class and histogram of every route, 48 more)", len(snap.Series), want)
	}
	if len(b) > procpool.MaxMetrics-2048 {
		t.Errorf("the worst snapshot is %d bytes; a heartbeat carries %d, and this wants 2 KiB to spare", len(b), procpool.MaxMetrics)
	}
}

func beat(t testing.TB, c *Cluster, slot, pid int, requests float64) {
	snap := Snapshot{V: SnapshotVersion}
	snap.Add("hybrid_http_requests_total", requests, "route", "/r")
	snap.Add("hybrid_worker_goroutines", 10)
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	c.Beat(slot, pid, b)
}

func value(fams []promtext.Family, name string) (sum float64, n int) {
	for _, f := range fams {
		if f.Name == name {
			for _, s := range f.Series {
				sum += s.Value
				n++
			}
		}
	}
	return sum, n
}

func TestClusterKeepsExitedWorkersCounts(t *testing.T) {
	var c Cluster
	beat(t, &c, 1, 100, 5)
	beat(t, &c, 2, 200, 3)
	beat(t, &c, 1, 101, 1) // slot 1's successor, during a reload
	if v, _ := value(c.Families(), "hybrid_http_requests_total"); v != 9 {
		t.Errorf("requests = %v; want 9", v)
	}
	if _, n := value(c.Families(), "hybrid_worker_goroutines"); n != 2 {
		t.Errorf("goroutines has %d series; want one per slot", n)
	}
	if v, n := value(c.Families(), snapshotBytes); n != 2 || v < 2*80 || v > 2*200 {
		t.Errorf("%s: %v over %d series; want one per slot, each the size of its last snapshot (~100 bytes)", snapshotBytes, v, n)
	}
	c.Exit(1, 100)
	c.Exit(1, 100)                     // twice: no double count
	c.Beat(2, 200, []byte(`{"v":99}`)) // another version: ignored
	if v, _ := value(c.Families(), "hybrid_http_requests_total"); v != 9 {
		t.Errorf("after an exit: requests = %v; want 9", v)
	}
	var next Cluster
	next.Carry(c.Totals())
	if v, _ := value(next.Families(), "hybrid_http_requests_total"); v != 9 {
		t.Errorf("carried: requests = %v; want 9", v)
	}
}

// BenchmarkRecord is what the metrics add to every request.
func BenchmarkRecord(b *testing.B) {
	rt := new(Requests).Route("/v1/hash/")
	post := []byte("POST")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rt.Record(post, 200, ModePool, 3*time.Millisecond)
		}
	})
}

// typicalSnapshot is one worker's snapshot: 10 routes × 3 statuses, their
// histograms, the gauges and both pools' figures.
func typicalSnapshot() *Snapshot {
	var r Requests
	for i := range 10 {
		rt := r.Route(fmt.Sprintf("/v1/route%d/", i))
		for _, st := range []int{200, 400, 503} {
			rt.Record([]byte("POST"), st, ModePool, time.Millisecond)
		}
	}
	snap := &Snapshot{V: SnapshotVersion}
	r.AppendTo(snap)
	for _, g := range []string{"hybrid_worker_goroutines", "hybrid_worker_open_connections", "hybrid_http_requests_in_flight",
		"hybrid_worker_resident_memory_bytes", "hybrid_http_in_flight_body_bytes"} {
		snap.Add(g, 1)
	}
	for _, p := range []string{"pool", "isolate"} {
		for _, g := range []string{"hybrid_tasks_queued", "hybrid_tasks_running", "hybrid_tasks_capacity", "hybrid_tasks_predicted_wait_seconds",
			"hybrid_tasks_refused_total", "hybrid_tasks_completed_total", "hybrid_tasks_timed_out_total"} {
			snap.Add(g, 1, "pool", p)
		}
	}
	return snap
}

// BenchmarkScrape is one /metrics of the workers' part, with 2 and 16
// workers' worth of series (each: typicalSnapshot).
func BenchmarkScrape(b *testing.B) {
	for _, workers := range []int{2, 16} {
		b.Run(fmt.Sprint(workers, "workers"), func(b *testing.B) {
			var c Cluster
			var size int
			for w := range workers {
				p, _ := json.Marshal(typicalSnapshot())
				size = len(p)
				c.Beat(w+1, 1000+w, p)
			}
			var out []byte
			b.ReportAllocs()
			for b.Loop() {
				out = promtext.Append(out[:0], c.Families())
			}
			b.ReportMetric(float64(len(out)), "scrape-bytes")
			b.ReportMetric(float64(size), "heartbeat-bytes")
		})
	}
}

// BenchmarkHeartbeat is the standing cost of the metrics, per worker and
// heartbeat (once a second by default): the worker encodes its snapshot,
// the primary decodes it.
func BenchmarkHeartbeat(b *testing.B) {
	snap := typicalSnapshot()
	p, _ := json.Marshal(snap)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(snap)
		}
		b.ReportMetric(float64(len(p)), "heartbeat-bytes")
	})
	b.Run("decode", func(b *testing.B) {
		var c Cluster
		b.ReportAllocs()
		for b.Loop() {
			c.Beat(1, 1000, p)
		}
	})
}

// A new primary takes the old one's provisional totals, then its final
// ones (the draining workers served on): nothing goes backwards, and the
// totals it hands on include what it was handed.
func TestClusterCarryProvisionalThenFinal(t *testing.T) {
	var old Cluster
	beat(t, &old, 1, 100, 5)
	provisional := old.CarryOut()
	beat(t, &old, 1, 100, 8) // served on while draining
	old.Exit(1, 100)
	final := old.CarryOut()

	var next Cluster
	beat(t, &next, 1, 200, 2)
	if err := next.CarryIn(provisional); err != nil {
		t.Fatal(err)
	}
	if v, _ := value(next.Families(), "hybrid_http_requests_total"); v != 7 {
		t.Errorf("provisional: requests = %v; want 5 + 2", v)
	}
	if err := next.CarryIn(final); err != nil {
		t.Fatal(err)
	}
	if err := next.CarryIn(provisional); err != nil { // late or twice: no dip
		t.Fatal(err)
	}
	if v, _ := value(next.Families(), "hybrid_http_requests_total"); v != 10 {
		t.Errorf("final: requests = %v; want 8 + 2", v)
	}
	if err := next.CarryIn([]byte(`{"v":99}`)); err == nil {
		t.Error("CarryIn took a payload of another version")
	}
	var third Cluster
	third.Carry(next.Totals())
	if v, _ := value(third.Families(), "hybrid_http_requests_total"); v != 10 {
		t.Errorf("carried twice: requests = %v; want 10", v)
	}
}
