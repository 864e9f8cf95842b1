//go:build linux

package procpool

import (
	"fmt"
	"slices"
	"syscall"
	"time"
)

// MaxPoolSize is the largest task-pool size [Supervisor.SetPoolSize] takes.
const MaxPoolSize = 4096

// drainCapGrace is what the oldest draining worker past the cap gets to
// finish before SIGKILL.
const drainCapGrace = time.Second

// Scale sets the number of workers, 1 to Config.MaxWorkers (else
// [ErrInvalid]). New workers start at once; the workers of removed slots
// (the highest numbered) drain. It returns once the change has begun, or
// [ErrBusy] during an upgrade. A reload under way goes on with the new
// count.
func (s *Supervisor) Scale(n int) error { return s.call(func() error { return s.onScale(n) }) }

func (s *Supervisor) onScale(n int) error {
	switch {
	case n < 1 || n > s.cfg.MaxWorkers:
		return fmt.Errorf("scale to %d workers: want 1 to %d: %w", n, s.cfg.MaxWorkers, ErrInvalid)
	case s.shutting:
		return ErrStopped
	case s.upgrade.active || s.handover != nil:
		return fmt.Errorf("scale refused: an upgrade is running: %w", ErrBusy)
	}
	was := len(s.slots)
	if n != was {
		s.log.Info("scaling workers", "from", was, "to", n)
	}
	for len(s.slots) < n {
		sl := &slot{id: len(s.slots) + 1, backoff: backoff{initial: s.cfg.RestartBackoff, max: s.cfg.RestartBackoffMax}}
		s.slots = append(s.slots, sl)
		s.spawn(sl, false)
	}
	advance := false
	for len(s.slots) > n {
		sl := s.slots[len(s.slots)-1]
		s.slots = s.slots[:len(s.slots)-1]
		sl.removed, sl.restartAt = true, time.Time{}
		for _, p := range []*proc{sl.next, sl.cur} {
			if p != nil {
				advance = advance || p.reload && p.state == StateStarting
				s.drain(p, "scaled down")
			}
		}
	}
	if advance { // the reload was waiting for a successor just drained
		s.advanceReload()
	}
	return nil
}

// SetPoolSize sets every worker's task-pool size (1 to [MaxPoolSize], else
// [ErrInvalid]) without a restart: the primary sends it over each worker's
// control channel, and workers started later get it too, until the next
// reload, which returns to the flags' size.
func (s *Supervisor) SetPoolSize(n int) error {
	return s.call(func() error {
		if n < 1 || n > MaxPoolSize {
			return fmt.Errorf("pool size %d: want 1 to %d: %w", n, MaxPoolSize, ErrInvalid)
		}
		if s.shutting {
			return ErrStopped
		}
		s.poolSize = n
		s.log.Info("setting the task-pool size of every worker", "pool_size", n)
		for p := range s.procs {
			if p.stop == stopNone {
				s.send(p, message{Type: msgPoolSize, Size: n})
			}
		}
		return nil
	})
}

// send writes m to the worker's control channel. A worker always reads it;
// one that does not within a second is hung, which the heartbeat timeout
// handles, so a failed send is only logged.
func (s *Supervisor) send(p *proc, m message) {
	b, err := encodeMessage(m)
	if err == nil {
		p.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
		_, err = p.ctrl.Write(b)
	}
	if err != nil {
		s.log.Warn("control message not sent", "worker", p.slot.id, "worker_pid", p.pid, "type", m.Type, "err", err.Error())
	}
}

// drainCap is the most workers left draining at once: twice the worker
// count. Draining workers wait up to Config.ShutdownTimeout for their
// requests, so without a cap a storm of reloads or scale changes would pile
// them up. Past the cap the oldest get drainCapGrace more; past the cap
// plus the worker count (a storm faster than that grace), the oldest get
// SIGKILL at once. So at most workers + 1 successor + 3 × workers worker
// processes run, whatever the rate of reloads.
func (s *Supervisor) drainCap() int { return 2 * len(s.slots) }

// capDraining enforces drainCap (timers in onTick). A shutdown drains
// everything: no cap.
func (s *Supervisor) capDraining() {
	if s.shutting {
		return
	}
	var draining []*proc
	for p := range s.procs {
		if p.stop == stopDrain {
			draining = append(draining, p)
		}
	}
	soft := len(draining) - s.drainCap()
	if soft <= 0 {
		return
	}
	hard := soft - len(s.slots)
	slices.SortFunc(draining, func(a, b *proc) int { return a.drainAt.Compare(b.drainAt) })
	now := time.Now()
	for i, p := range draining[:soft] {
		if i < hard {
			s.log.Warn("too many workers draining: killing the oldest now", "worker", p.slot.id, "worker_pid", p.pid,
				"draining", len(draining), "cap", s.drainCap())
			p.capped, p.killAt = true, time.Time{}
			p.signal(syscall.SIGKILL)
			continue
		}
		if p.capped {
			continue
		}
		p.capped = true
		if kill := now.Add(drainCapGrace); kill.Before(p.killAt) {
			p.killAt = kill
		}
		s.log.Warn("too many workers draining: stopping the oldest", "worker", p.slot.id, "worker_pid", p.pid,
			"draining", len(draining), "cap", s.drainCap(), "kill_in", drainCapGrace.String())
	}
}

// ReloadEnv is [Supervisor.Reload] that also replaces Config.Env, what is
// added to every worker's environment, for the workers the reload starts
// and every worker started after it (restarts, recycles, scale-ups). Both
// happen on the loop, at once: a refused reload ([ErrBusy], [ErrStopped])
// leaves Config.Env as it was, and no worker ever starts with the new
// environment outside a reload.
func (s *Supervisor) ReloadEnv(env []string) error {
	env = slices.Clone(env)
	return s.call(func() error {
		old := s.cfg.Env
		s.cfg.Env = env
		if err := s.onReload(); err != nil {
			s.cfg.Env = old
			return err
		}
		return nil
	})
}
