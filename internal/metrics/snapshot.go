package metrics

import (
	"strconv"

	"github.com/hybrid-server/hybrid/internal/promtext"
)

// SnapshotVersion is the version of [Snapshot]'s encoding. A primary
// ignores a snapshot of another version (a worker of another binary
// during an upgrade is never one of its own).
const SnapshotVersion = 1

// Snapshot is a worker's metrics as it sends them in its heartbeat, JSON
// encoded: every series by name and labels. The primary sums the counters
// and histograms of every worker, and keeps gauges per worker slot.
type Snapshot struct {
	V      int      `json:"v"`
	Series []Series `json:"s"`
}

// Series is one sample of a family in [catalog]. Labels alternate name
// and value. A histogram's Counts are per bucket of [Bounds] plus +Inf, not
// cumulative, and Value is its sum.
type Series struct {
	Name   string   `json:"n"`
	Labels []string `json:"l,omitempty"`
	Value  float64  `json:"v,omitempty"`
	Counts []uint64 `json:"c,omitempty"`
}

// IsFoldedStatus reports whether status is the status label of a folded
// series, one that counts a worker's requests past its budget of
// combinations (see [Requests]) by status class: "1xx" to "5xx", or "other"
// for a status outside 100-599. Such a series has method "OTHER" and
// mode "".
func IsFoldedStatus(status string) bool {
	for _, c := range classNames {
		if status == c {
			return true
		}
	}
	return false
}

// Folded is the number of requests snap counts in folded series.
func (snap *Snapshot) Folded() float64 {
	var n float64
	for i := range snap.Series {
		s := &snap.Series[i]
		if s.Name == "hybrid_http_requests_total" && len(s.Labels) == 8 && IsFoldedStatus(s.Labels[7]) {
			n += s.Value
		}
	}
	return n
}

// appendTo appends rt's series to snap.
func (rt *Route) appendTo(snap *Snapshot) {
	for i := range rt.slots {
		s := &rt.slots[i]
		k := s.key.Load()
		if k == 0 {
			continue
		}
		k--
		method, status, mode := methods[k>>14&0xf], int(k>>2&0xfff), modeNames[k&3]
		snap.Series = append(snap.Series, Series{Name: "hybrid_http_requests_total",
			Labels: []string{"method", method, "mode", mode, "route", rt.pattern, "status", strconv.Itoa(status)},
			Value:  float64(s.n.Load())})
	}
	for c := range rt.folded {
		if n := rt.folded[c].Load(); n > 0 {
			snap.Series = append(snap.Series, Series{Name: "hybrid_http_requests_total",
				Labels: []string{"method", methods[0], "mode", modeNames[ModeNone], "route", rt.pattern, "status", classNames[c]},
				Value:  float64(n)})
		}
	}
	for m := range rt.hist {
		h := &rt.hist[m]
		counts := make([]uint64, len(h.counts))
		var total uint64
		for i := range h.counts {
			counts[i] = h.counts[i].Load()
			total += counts[i]
		}
		if total == 0 {
			continue
		}
		snap.Series = append(snap.Series, Series{Name: "hybrid_http_request_duration_seconds",
			Labels: []string{"mode", modeNames[m], "route", rt.pattern},
			Value:  float64(h.sumNS.Load()) / 1e9, Counts: counts})
	}
}

// AppendTo appends every route's series to snap.
func (r *Requests) AppendTo(snap *Snapshot) {
	r.mu.Lock()
	routes := r.routes
	r.mu.Unlock()
	for _, rt := range routes {
		rt.appendTo(snap)
	}
}

// Add appends a series of name with labels (name, value pairs).
func (snap *Snapshot) Add(name string, v float64, labels ...string) {
	snap.Series = append(snap.Series, Series{Name: name, Labels: labels, Value: v})
}

// desc is a family's help and type, and how the primary combines two
// workers' gauges of one slot (during a reload, a slot has two).
type desc struct {
	help string
	typ  promtext.Type
	max  bool // a gauge whose sum means nothing: take the largest
}

// catalog is every family a worker sends. The primary exports only these:
// a snapshot names no family it does not know.
var catalog = map[string]desc{
	"hybrid_http_requests_total":               {"HTTP requests served, by route pattern, method, status and mode (\"\" for a route that runs no workload); status \"1xx\" to \"5xx\" (\"other\": outside 100-599) with method \"OTHER\" and mode \"\": a worker's requests past its 64 combinations (32 on one route), by status class.", promtext.Counter, false},
	"hybrid_http_request_duration_seconds":     {"HTTP request duration from the handler's start to the response's, by route pattern and mode.", promtext.Histogram, false},
	"hybrid_http_connections_refused_total":    {"Connections refused over --max-conns or --max-conns-per-ip.", promtext.Counter, false},
	"hybrid_http_bodies_refused_total":         {"Request bodies refused (503) because the budget of body bytes in flight was spent.", promtext.Counter, false},
	"hybrid_tasks_refused_total":               {"Tasks refused by a pool's admission (503 overloaded), by pool (pool: the task pool, isolate: the isolated-children pool).", promtext.Counter, false},
	"hybrid_tasks_completed_total":             {"Tasks a pool ran to their end, by pool.", promtext.Counter, false},
	"hybrid_tasks_timed_out_total":             {"Tasks past the task deadline, by pool.", promtext.Counter, false},
	"hybrid_tasks_panicked_total":              {"Tasks that panicked, by pool.", promtext.Counter, false},
	"hybrid_isolate_outcomes_total":            {"Isolated tasks by outcome.", promtext.Counter, false},
	"hybrid_isolate_children_started_total":    {"Isolated child processes started.", promtext.Counter, false},
	"hybrid_access_requests_total":             {"Workload requests by the gate's outcome: allowed, rate_limited (429), unauthorized (401), redis_failed_closed (503).", promtext.Counter, false},
	"hybrid_ratelimit_redis_errors_total":      {"Rate-limit decisions Redis failed to make (a timeout, a refused connection); --redis-fail decided them.", promtext.Counter, false},
	"hybrid_ratelimit_redis_failed_open_total": {"Requests admitted without a decision while Redis failed (--redis-fail open).", promtext.Counter, false},
	"hybrid_cache_requests_total":              {"Cacheable workload requests by result (hit, miss, not_modified: a 304) and, for hits, the tier that answered (box, redis).", promtext.Counter, false},
	"hybrid_cache_stores_total":                {"Results stored in the cache.", promtext.Counter, false},
	"hybrid_cache_stores_dropped_total":        {"Results not stored because 16 MiB of stores were already in flight.", promtext.Counter, false},
	"hybrid_cache_errors_total":                {"Cache lookups and stores that failed (counted as misses).", promtext.Counter, false},

	"hybrid_http_requests_in_flight":      {"HTTP requests being served, per worker.", promtext.Gauge, false},
	"hybrid_http_in_flight_body_bytes":    {"Request-body bytes held (read, being read, or in a handler's hands), per worker.", promtext.Gauge, false},
	"hybrid_worker_open_connections":      {"Open client connections, per worker.", promtext.Gauge, false},
	"hybrid_worker_resident_memory_bytes": {"Resident set size of the worker process (of both during a reload).", promtext.Gauge, false},
	"hybrid_worker_goroutines":            {"Goroutines in the worker process.", promtext.Gauge, false},
	"hybrid_tasks_queued":                 {"Tasks waiting for a run slot, by pool, per worker.", promtext.Gauge, false},
	"hybrid_tasks_running":                {"Tasks running, by pool, per worker.", promtext.Gauge, false},
	"hybrid_tasks_capacity":               {"Run slots, by pool, per worker.", promtext.Gauge, false},
	"hybrid_tasks_predicted_wait_seconds": {"The wait a task arriving now would have before it runs, by pool, per worker.", promtext.Gauge, true},
}
