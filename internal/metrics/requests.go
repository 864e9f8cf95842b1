// Package metrics is hybrid's Prometheus metrics: the request counters and
// latency histograms a worker records on its request path ([Requests],
// [Route]), the snapshot a worker sends the primary in its heartbeat
// ([Snapshot], opaque to procpool), and the primary's aggregation of every
// worker's snapshot ([Cluster]), written by package promtext.
//
// Counters and histograms are summed over the cluster, with the last
// snapshot of every worker that exited kept in the sums, so that they never
// go backwards across recycling, crashes, reloads and scale-down. Gauges are
// per worker slot (label worker).
package metrics

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds are the request-duration histogram's bucket upper bounds, in
// seconds: 0.5 ms to 30 s.
var Bounds = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

var boundsNS = func() (ns [15]int64) {
	for i, b := range Bounds {
		ns[i] = int64(b * 1e9)
	}
	return ns
}()

// Mode is where a request's workload ran: ModeNone for a route that runs
// no workload.
type Mode uint8

// The modes, as handlers names them.
const (
	ModeNone Mode = iota
	ModeInline
	ModePool
	ModeIsolate
	nModes
)

var modeNames = [nModes]string{"", "inline", "pool", "isolate"}

// ParseMode maps "inline", "pool" and "isolate" to their Mode, anything else
// to ModeNone.
func ParseMode(s string) Mode {
	switch s {
	case "inline":
		return ModeInline
	case "pool":
		return ModePool
	case "isolate":
		return ModeIsolate
	}
	return ModeNone
}

// methods are the method label's values; any other method is "OTHER", so
// that a client cannot mint series.
var methods = [...]string{"OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}

func methodIndex(m []byte) uint32 {
	switch string(m) {
	case "GET":
		return 1
	case "HEAD":
		return 2
	case "POST":
		return 3
	case "PUT":
		return 4
	case "DELETE":
		return 5
	case "PATCH":
		return 6
	case "OPTIONS":
		return 7
	case "CONNECT":
		return 8
	case "TRACE":
		return 9
	}
	return 0
}

// Unmatched is the route label of a request no route took (404, or refused
// before routing: a bad target, a body over the limit).
const Unmatched = "unmatched"

// Requests is a worker's per-route request metrics. Routes are added while
// the router is built; recording is lock-free.
//
// The series a worker can make are bounded, so that its snapshot always
// fits a heartbeat (procpool.MaxMetrics, 48 KiB): at most [MaxSeries]
// (route, method, status, mode) combinations over all its routes, at most
// 32 on one route. A request whose combination finds no room is counted
// all the same, folded into one of its route's series by status class:
// method "OTHER", mode "" and status "1xx" to "5xx" ("other" for a status
// outside 100-599), its duration still going to the histogram of its mode.
// So hybrid_http_requests_total still sums to every request served, and a
// 5xx past the budget still matches status=~"5..": a client that spends
// the budget with cheap 404s and 405s hides the method, the exact status
// and the mode of what follows, never its class. Method is one of 10
// values already (any other is "OTHER"), and route is the router's pattern
// or "unmatched", never a client's path.
type Requests struct {
	mu     sync.Mutex
	routes []*Route
	byPat  map[string]*Route
	series atomic.Int32 // combinations taken, over every route
}

// MaxSeries bounds the (route, method, status, mode) combinations one
// worker counts apart, over all its routes. A worker sees a few dozen in
// practice (each workload route: 200 and its errors, in one or two
// modes); the rest takes a scanner's odd methods (405s). It is what is
// left of a heartbeat once every route's folded series (up to
// [nClasses] each) and histograms are counted: see
// TestWorstSnapshotFitsAHeartbeat.
const MaxSeries = 64

// Route returns the metrics of the route registered as pattern, made on
// the first call. Safe on a nil *Requests (it returns nil, on which Record
// does nothing).
func (r *Requests) Route(pattern string) *Route {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt := r.byPat[pattern]; rt != nil {
		return rt
	}
	if r.byPat == nil {
		r.byPat = map[string]*Route{}
	}
	rt := &Route{pattern: pattern, owner: r}
	r.byPat[pattern] = rt
	r.routes = append(r.routes, rt)
	return rt
}

// routeSlots bounds the (method, status, mode) combinations one route
// counts apart; past it (or past [MaxSeries] over the worker), requests
// are folded into the route's series of their status class.
const routeSlots = 32

// Route is one route's counters: requests by method, status and mode, and
// a latency histogram by mode. Record allocates nothing and takes no lock.
type Route struct {
	pattern string
	owner   *Requests // its series budget; nil: none
	slots   [routeSlots]struct {
		key atomic.Uint32 // 0: free; else 1 + method<<14 | status<<2 | mode
		n   atomic.Uint64
	}
	hist   [nModes]histogram
	folded [nClasses]atomic.Uint64 // requests of a combination that found no room, by statusClass
}

// nClasses is the number of status classes a route folds into: 1xx to 5xx,
// and 0 for a status outside 100-599.
const nClasses = 6

// classNames are the status labels of the folded series, by statusClass.
var classNames = [nClasses]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// statusClass is status's class: 1 to 5 for 1xx to 5xx, 0 otherwise.
func statusClass(status int) int {
	if status < 100 || status > 599 {
		return 0
	}
	return status / 100
}

type histogram struct {
	counts [len(boundsNS) + 1]atomic.Uint64
	sumNS  atomic.Uint64
}

// Record counts one request with its method, status, mode and duration.
// Safe on a nil *Route.
func (rt *Route) Record(method []byte, status int, mode Mode, d time.Duration) {
	if rt == nil {
		return
	}
	if mode >= nModes {
		mode = ModeNone
	}
	if status < 0 || status > 999 {
		status = 0
	}
	key := 1 + (methodIndex(method)<<14 | uint32(status)<<2 | uint32(mode))
	if !rt.count(key) {
		rt.folded[statusClass(status)].Add(1)
	}
	h := &rt.hist[mode]
	ns := max(int64(d), 0)
	b := 0
	for b < len(boundsNS) && ns > boundsNS[b] {
		b++
	}
	h.counts[b].Add(1)
	h.sumNS.Add(uint64(ns))
}

// count adds one to key's slot, taking a free one for a new key (open
// addressing, linear probing); false if every slot holds another key, or
// the worker's budget of series is spent.
func (rt *Route) count(key uint32) bool {
	i := (key * 2654435761) >> (32 - bits.Len32(routeSlots-1))
	for range routeSlots {
		s := &rt.slots[i]
		k := s.key.Load()
		if k == 0 {
			// Slots are never freed: a free one ends key's probe chain.
			if !rt.reserve() {
				return false
			}
			if s.key.CompareAndSwap(0, key) {
				k = key
			} else {
				rt.unreserve()
				k = s.key.Load() // taken meanwhile
			}
		}
		if k == key {
			s.n.Add(1)
			return true
		}
		i = (i + 1) % routeSlots
	}
	return false
}

// reserve takes one series of the worker's budget; false when spent.
func (rt *Route) reserve() bool {
	if rt.owner == nil {
		return true
	}
	if rt.owner.series.Add(1) > MaxSeries {
		rt.owner.series.Add(-1)
		return false
	}
	return true
}

func (rt *Route) unreserve() {
	if rt.owner != nil {
		rt.owner.series.Add(-1)
	}
}
