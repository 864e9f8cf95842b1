package main

import (
	"encoding/json"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/hybrid-server/hybrid/internal/promtext"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/taskpool"
)

// snapshotter makes a worker's metrics snapshots for its heartbeats, and
// says in the log, once each, when requests were folded (the worker's
// budget of series is spent: metrics.Requests) and when a snapshot is
// over what a heartbeat carries (the primary would keep the previous one,
// and this worker's counters would stand still).
type snapshotter struct {
	st                 *workerStack
	log                *slog.Logger
	warnFold, warnSize sync.Once
}

// take is the worker's metrics snapshot for its heartbeat: the server's,
// both pools' and the isolator's outcomes. Called once per heartbeat
// interval.
func (sn *snapshotter) take() json.RawMessage {
	snap := workerSnapshot(sn.st)
	if n := snap.Folded(); n > 0 {
		sn.warnFold.Do(func() {
			sn.log.Warn("metrics: more request combinations than this worker counts apart; the rest are counted by route and status class (status \"2xx\", \"5xx\", ...)",
				"max_series", metrics.MaxSeries, "folded", n)
		})
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return nil
	}
	if len(b) > procpool.MaxMetrics {
		sn.warnSize.Do(func() {
			sn.log.Warn("metrics: the snapshot is over what a heartbeat carries; the primary keeps this worker's last one, and its counters stand still",
				"bytes", len(b), "max_bytes", procpool.MaxMetrics)
		})
	}
	return b
}

// workerSnapshot is the worker's metrics now.
func workerSnapshot(st *workerStack) *metrics.Snapshot {
	snap := &metrics.Snapshot{V: metrics.SnapshotVersion}
	st.srv.AppendMetrics(snap)
	for _, p := range []struct {
		name string
		pool *taskpool.Pool
	}{{"pool", st.pool}, {"isolate", st.isoPool}} {
		s := p.pool.Stats()
		snap.Add("hybrid_tasks_queued", float64(s.Waiting), "pool", p.name)
		snap.Add("hybrid_tasks_running", float64(s.Running), "pool", p.name)
		snap.Add("hybrid_tasks_capacity", float64(s.Capacity), "pool", p.name)
		snap.Add("hybrid_tasks_predicted_wait_seconds", s.PredictedWaitMS/1000, "pool", p.name)
		snap.Add("hybrid_tasks_refused_total", float64(s.Rejected), "pool", p.name)
		snap.Add("hybrid_tasks_completed_total", float64(s.Completed), "pool", p.name)
		snap.Add("hybrid_tasks_timed_out_total", float64(s.TimedOut), "pool", p.name)
		snap.Add("hybrid_tasks_panicked_total", float64(s.Panicked), "pool", p.name)
	}
	is := st.iso.Stats()
	for outcome, n := range is.Outcomes {
		snap.Add("hybrid_isolate_outcomes_total", float64(n), "outcome", outcome)
	}
	snap.Add("hybrid_isolate_children_started_total", float64(is.Started))
	if a := st.exec.Access; a != nil {
		as := a.Stats()
		snap.Add("hybrid_access_requests_total", float64(as.Allowed), "outcome", "allowed")
		snap.Add("hybrid_access_requests_total", float64(as.Limited), "outcome", "rate_limited")
		snap.Add("hybrid_access_requests_total", float64(as.Unauthorized), "outcome", "unauthorized")
		snap.Add("hybrid_access_requests_total", float64(as.FailedClosed), "outcome", "redis_failed_closed")
		snap.Add("hybrid_ratelimit_redis_errors_total", float64(as.RedisErrors))
		snap.Add("hybrid_ratelimit_redis_failed_open_total", float64(as.FailedOpen))
	}
	if rc := st.exec.Cache; rc != nil {
		cs := rc.Stats()
		snap.Add("hybrid_cache_requests_total", float64(cs.HitsLocal), "result", "hit", "tier", "box")
		snap.Add("hybrid_cache_requests_total", float64(cs.HitsRemote), "result", "hit", "tier", "redis")
		snap.Add("hybrid_cache_requests_total", float64(cs.Misses), "result", "miss", "tier", "")
		snap.Add("hybrid_cache_requests_total", float64(cs.NotModified), "result", "not_modified", "tier", "")
		snap.Add("hybrid_cache_stores_total", float64(cs.Stores))
		snap.Add("hybrid_cache_stores_dropped_total", float64(cs.StoreDropped))
		snap.Add("hybrid_cache_errors_total", float64(cs.Errors))
	}
	return snap
}

// metricsText appends the primary's /metrics: its workers' metrics
// (cluster), its own counters and gauges from sup's snapshot, and the build
// info. lastSize sizes the next buffer.
func metricsText(sup *procpool.Supervisor, cluster *metrics.Cluster, shared *primaryShared) func([]byte) []byte {
	var lastSize atomic.Int64
	version, build := procpool.BuildInfo()
	return func(b []byte) []byte {
		fams := append(cluster.Families(), primaryFamilies(sup.Snapshot())...)
		fams = append(fams, shared.families()...)
		fams = append(fams, promtext.Family{Name: "hybrid_build_info", Type: promtext.Gauge,
			Help: "Always 1: the primary's version, build and Go version as labels.",
			Series: []promtext.Series{{Value: 1, Labels: []promtext.Label{
				{Name: "build", Value: build}, {Name: "goversion", Value: runtime.Version()}, {Name: "version", Value: version}}}}})
		if b == nil {
			b = make([]byte, 0, lastSize.Load()+1024)
		}
		b = promtext.Append(b, fams)
		lastSize.Store(int64(len(b)))
		return b
	}
}

// primaryFamilies are the primary's own metrics.
func primaryFamilies(s procpool.Snapshot) []promtext.Family {
	one := func(name, help string, typ promtext.Type, v float64) promtext.Family {
		return promtext.Family{Name: name, Help: help, Type: typ, Series: []promtext.Series{{Value: v}}}
	}
	circuit := 0.0
	if s.Circuit == "open" {
		circuit = 1
	}
	fams := []promtext.Family{
		one("hybrid_worker_forks_total", "Worker processes started.", promtext.Counter, float64(s.Forks)),
		one("hybrid_worker_crashes_total", "Unexpected worker exits (failed starts included).", promtext.Counter, float64(s.Crashes)),
		one("hybrid_worker_restarts_total", "Workers started again after a crash.", promtext.Counter, float64(s.Restarts)),
		one("hybrid_reloads_total", "Rolling reloads started.", promtext.Counter, float64(s.Reloads)),
		one("hybrid_upgrades_total", "Binary upgrades started.", promtext.Counter, float64(s.Upgrades)),
		one("hybrid_circuit_open", "1 while the crash circuit is open (no worker starts until a reload), else 0.", promtext.Gauge, circuit),
		one("hybrid_workers_wanted", "Worker slots wanted (--workers, or as scaled).", promtext.Gauge, float64(s.WorkersWanted)),
		one("hybrid_workers_ready", "Worker slots whose current worker is ready.", promtext.Gauge, float64(s.WorkersReady)),
	}
	states := map[string]float64{procpool.StateStarting: 0, procpool.StateReady: 0, procpool.StateDraining: 0}
	for _, w := range s.Workers {
		states[w.State]++
	}
	f := promtext.Family{Name: "hybrid_worker_processes", Help: "Worker processes by state (a reload or recycle overlaps two per slot).", Type: promtext.Gauge}
	for st, n := range states {
		f.Series = append(f.Series, promtext.Series{Labels: []promtext.Label{{Name: "state", Value: st}}, Value: n})
	}
	return append(fams, f)
}

// families are the primary's metrics of the box's shared state: the
// cache it holds and the rate table's evictions.
func (ps *primaryShared) families() []promtext.Family {
	one := func(name, help string, typ promtext.Type, v float64) promtext.Family {
		return promtext.Family{Name: name, Help: help, Type: typ, Series: []promtext.Series{{Value: v}}}
	}
	fams := []promtext.Family{one("hybrid_ratelimit_evictions_total",
		"Clients the box's rate table forgot while their state still restricted them (it was full).",
		promtext.Counter, float64(ps.table.Evictions()))}
	if ps.cache == nil {
		return fams
	}
	cs := ps.cache.Stats()
	return append(fams,
		one("hybrid_cache_evictions_total", "Results the box's cache dropped to stay within --cache-size.", promtext.Counter, float64(cs.Evictions)),
		one("hybrid_cache_expired_total", "Results the box's cache dropped past --cache-ttl.", promtext.Counter, float64(cs.Expired)),
		one("hybrid_cache_bytes", "Bytes the box's cache holds, its per-entry overhead included.", promtext.Gauge, float64(cs.Bytes)),
		one("hybrid_cache_entries", "Results the box's cache holds.", promtext.Gauge, float64(cs.Entries)))
}
