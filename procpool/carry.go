//go:build linux

package procpool

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"
)

// An upgrade carries totals from the old primary to the new one on a pipe
// of its own (fd "carry" in upgradeEnv), next to the ready pipe: one JSON
// line, carryMessage, when the old primary gets "ready" (provisional: its
// workers drain and serve on), and one once they have all exited (final).
// The new primary applies the provisional line before TookOver closes, and
// the final one over it.

// carryVersion is carryMessage's version. A primary ignores a line of
// another version: it counts from zero, as before the carry existed.
const carryVersion = 1

// carryWait bounds how long a new primary that told the old one "ready"
// waits for its provisional totals before it serves without them.
const carryWait = 2 * time.Second

// carryWriteTimeout bounds each write on the carry pipe, so that a new
// primary that reads nothing never holds up the old one's exit.
const carryWriteTimeout = 2 * time.Second

// maxCarry bounds what a new primary reads from the carry pipe.
const maxCarry = 16 << 20

// Counts are a primary's own counters, carried over upgrades: the
// [Snapshot]'s totals are this primary's plus those it was handed.
type Counts struct {
	Forks    int64 `json:"forks"`
	Crashes  int64 `json:"crashes"`
	Restarts int64 `json:"restarts"`
	Reloads  int64 `json:"reloads"`
	Upgrades int64 `json:"upgrades"`
}

// atLeast returns c with every counter raised to o's, where o's is larger.
func (c Counts) atLeast(o Counts) Counts {
	return Counts{max(c.Forks, o.Forks), max(c.Crashes, o.Crashes), max(c.Restarts, o.Restarts),
		max(c.Reloads, o.Reloads), max(c.Upgrades, o.Upgrades)}
}

// carryMessage is one line on the carry pipe.
type carryMessage struct {
	V       int    `json:"v"`
	Final   bool   `json:"final"`
	Counts  Counts `json:"counts"`
	Payload []byte `json:"payload,omitempty"` // Config.CarryOut's, opaque
}

// counts is this primary's totals, those it was handed included.
func (s *Supervisor) counts() Counts {
	return Counts{
		Forks:    s.carried.Forks + s.forks.Load(),
		Crashes:  s.carried.Crashes + s.crashCount,
		Restarts: s.carried.Restarts + s.restarts,
		Reloads:  s.carried.Reloads + s.reloads,
		Upgrades: s.carried.Upgrades + s.upgrades,
	}
}

// carrier is the old primary's side: a goroutine that writes the lines
// given to send, in order, then closes the pipe.
type carrier struct {
	lines chan []byte
	done  chan struct{}
}

func newCarrier(f *os.File) *carrier {
	c := &carrier{lines: make(chan []byte, 2), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer f.Close()
		ok := true
		for line := range c.lines {
			if !ok {
				continue
			}
			_ = f.SetWriteDeadline(time.Now().Add(carryWriteTimeout))
			_, err := f.Write(line)
			ok = err == nil
		}
	}()
	return c
}

// send queues this primary's totals (never blocks: there are two lines at
// most).
func (s *Supervisor) sendCarry(c *carrier, final bool) {
	if c == nil {
		return
	}
	m := carryMessage{V: carryVersion, Final: final, Counts: s.counts()}
	if s.cfg.CarryOut != nil {
		m.Payload = s.cfg.CarryOut()
	}
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	select {
	case c.lines <- append(b, '\n'):
	default:
	}
}

// close ends the carrier once what it was sent is written, or its write
// timed out; wait makes it wait for that.
func (c *carrier) close(wait bool) {
	if c == nil {
		return
	}
	close(c.lines)
	if wait {
		<-c.done
	}
}

// readCarry is the new primary's side: it reads the old primary's lines
// until EOF, hands each payload to Config.CarryIn and its counts to the
// loop, and closes the pipe.
func (s *Supervisor) readCarry(f *os.File) {
	defer f.Close()
	r := bufio.NewReader(io.LimitReader(f, maxCarry))
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) || len(line) > 0 {
				s.log.Warn("upgrade: the old primary's totals were cut short", "err", errors.Join(err, io.ErrUnexpectedEOF).Error())
			}
			s.post(s.carryEnded)
			return
		}
		var m carryMessage
		if err := json.Unmarshal(line, &m); err != nil || m.V != carryVersion {
			s.log.Warn("upgrade: the old primary's totals are of another version or unreadable: counting on without them",
				"want_version", carryVersion)
			continue
		}
		if s.cfg.CarryIn != nil && len(m.Payload) > 0 {
			s.cfg.CarryIn(m.Payload, m.Final)
		}
		s.post(func() { s.onCarried(m.Counts, m.Final) })
	}
}

// onCarried takes the old primary's counters: provisional, then final.
func (s *Supervisor) onCarried(c Counts, final bool) {
	s.carried = s.carried.atLeast(c)
	s.log.Info("upgrade: the old primary's totals carried", "final", final, "forks", c.Forks, "upgrades", c.Upgrades)
	s.carryGot = true
	s.serveCarried()
}

// carryEnded: the old primary sent all it will, or is gone: its workers
// have exited (it closes the pipe once they have), and an upgrade of this
// primary may start.
func (s *Supervisor) carryEnded() {
	s.carryGot = true
	s.serveCarried()
	if s.predecessor != 0 {
		s.log.Info("upgrade: the old primary's workers have all exited", "old_primary_pid", s.predecessor)
		s.predecessor = 0
	}
}

// awaitCarry, in a primary that has just told the old one "ready", closes
// TookOver once it has the old primary's provisional totals, at once if it
// has them (or never will), or after carryWait (carryTick).
func (s *Supervisor) awaitCarry() {
	if s.carryGot {
		close(s.tookOver)
		return
	}
	s.carryAwait = time.Now().Add(carryWait)
}

// serveCarried closes TookOver if this primary waits for the totals. A
// primary shutting down never takes over: one that told the old primary
// "ready" just after the old one rolled it back (its start timeout) would
// otherwise serve the admin socket, and tell systemd it is the main
// process, while it drains.
func (s *Supervisor) serveCarried() {
	if s.shutting {
		s.carryAwait = time.Time{}
		return
	}
	if !s.carryAwait.IsZero() {
		s.carryAwait = time.Time{}
		close(s.tookOver)
	}
}

// carryTick gives up waiting for the old primary's totals past carryWait.
func (s *Supervisor) carryTick(now time.Time) {
	if !s.carryAwait.IsZero() && now.After(s.carryAwait) {
		s.log.Warn("upgrade: the old primary sent no totals in time: serving without them until they come", "waited", carryWait.String())
		s.serveCarried()
	}
}
