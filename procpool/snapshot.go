//go:build linux

package procpool

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"time"
)

// Snapshot is the cluster's state, as the admin endpoint reports it.
type Snapshot struct {
	PrimaryPID      int    `json:"primary_pid"`
	Version         string `json:"version"` // the primary's (BuildInfo)
	Build           string `json:"build,omitempty"`
	Binary          string `json:"binary"` // what an upgrade executes
	Addr            string `json:"addr"`
	ListenMode      string `json:"listen_mode"`
	Circuit         string `json:"circuit"` // "closed" or "open"
	CircuitReason   string `json:"circuit_reason,omitempty"`
	CrashesInWindow int    `json:"crashes_in_window"`
	Forks           int64  `json:"forks_total"`
	WorkersWanted   int    `json:"workers_wanted"`
	WorkersReady    int    `json:"workers_ready"`
	WorkersMax      int    `json:"workers_max"`         // the most Scale takes
	PoolSize        int    `json:"pool_size,omitempty"` // set by SetPoolSize; absent: the flags'
	Reloading       bool   `json:"reloading"`
	// Reloads and Upgrades count those started: a reload that began and
	// ended between two looks at the snapshot still shows. They, Forks,
	// Crashes and Restarts are totals over upgrades: an upgrade's new
	// primary counts on from the old one's ([Counts], carried once it took
	// over).
	Reloads  int64 `json:"reloads_total"`
	Upgrades int64 `json:"upgrades_total"`
	// Crashes counts the workers' unexpected exits (failed starts
	// included), Restarts the workers started again after one.
	Crashes  int64 `json:"crashes_total"`
	Restarts int64 `json:"restarts_total"`
	// Upgrading: an upgrade is under way (in a new primary: until it has
	// told the old one it is ready).
	Upgrading    bool            `json:"upgrading"`
	LastUpgrade  *UpgradeOutcome `json:"last_upgrade,omitempty"`
	ShuttingDown bool            `json:"shutting_down"`
	Workers      []WorkerInfo    `json:"workers"`
}

// WorkerInfo is one worker process in a [Snapshot]. During a reload or a
// recycle a slot shows two: the old one and its successor.
type WorkerInfo struct {
	ID         int       `json:"id"`
	PID        int       `json:"pid"`
	State      string    `json:"state"`
	Restarts   int       `json:"restarts"`
	StartedAt  time.Time `json:"started_at"`
	RSS        uint64    `json:"rss_bytes"`
	Requests   uint64    `json:"requests"`
	InFlight   int64     `json:"in_flight"`
	Goroutines int       `json:"goroutines"`
	// Version and Build are the worker's own, from its ready message;
	// empty until then.
	Version string `json:"version,omitempty"`
	Build   string `json:"build,omitempty"`
	// Conns is the worker's open connections, live from the accept board;
	// absent without one (a single worker, reuseport, --accept-balance off).
	Conns *int32 `json:"open_conns,omitempty"`
	// Pprof is the worker's Heartbeat.Pprof. Not published: its path is
	// the secret that keeps other local users out.
	Pprof string `json:"-"`
}

// Health says whether the cluster serves at full strength, and if not, why.
func (s Snapshot) Health() (ok bool, reason string) {
	switch {
	case s.ShuttingDown:
		return false, "shutting down"
	case s.Circuit == "open":
		return false, "degraded: circuit open: " + s.CircuitReason
	case s.WorkersReady < s.WorkersWanted:
		return false, fmt.Sprintf("degraded: %d of %d workers ready", s.WorkersReady, s.WorkersWanted)
	}
	return true, ""
}

// publish stores a fresh snapshot for readers on other goroutines.
func (s *Supervisor) publish() {
	version, build := BuildInfo()
	c := s.counts()
	snap := &Snapshot{
		PrimaryPID:      os.Getpid(),
		Version:         version,
		Build:           build,
		Binary:          s.cfg.Binary,
		WorkersMax:      s.cfg.MaxWorkers,
		PoolSize:        s.poolSize,
		Upgrading:       s.upgrade.active && !s.upgrade.succeeded || s.handover != nil || !s.carryAwait.IsZero(),
		LastUpgrade:     s.lastUpgrade,
		Addr:            s.sock.addr.String(),
		ListenMode:      s.cfg.ListenMode,
		Circuit:         "closed",
		CircuitReason:   s.circuitWhy,
		CrashesInWindow: s.crashes.count(time.Now()),
		Forks:           c.Forks,
		Crashes:         c.Crashes,
		Restarts:        c.Restarts,
		WorkersWanted:   len(s.slots),
		Reloading:       s.reload.active,
		Reloads:         c.Reloads,
		Upgrades:        c.Upgrades,
		ShuttingDown:    s.shutting,
		Workers:         make([]WorkerInfo, 0, len(s.procs)),
	}
	if s.circuitOpen {
		snap.Circuit = "open"
	}
	for _, sl := range s.slots {
		if sl.cur != nil && sl.cur.state == StateReady {
			snap.WorkersReady++
		}
	}
	for p := range s.procs {
		var conns *int32
		if p.entry >= 0 {
			n := s.board.conns(p.entry).Load()
			conns = &n
		}
		snap.Workers = append(snap.Workers, WorkerInfo{
			Conns:      conns,
			ID:         p.slot.id,
			PID:        p.pid,
			State:      p.state,
			Restarts:   max(0, p.slot.spawned-1),
			StartedAt:  p.started.UTC(),
			RSS:        p.beat.RSS,
			Requests:   p.beat.Requests,
			InFlight:   p.beat.InFlight,
			Goroutines: p.beat.Goroutines,
			Version:    p.version,
			Build:      p.build,
			Pprof:      p.beat.Pprof,
		})
	}
	slices.SortFunc(snap.Workers, func(a, b WorkerInfo) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), a.StartedAt.Compare(b.StartedAt))
	})
	s.snap.Store(snap)
}
