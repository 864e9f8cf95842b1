//go:build linux

package procpool

import (
	"log/slog"
	"os"
	"testing"
	"time"
)

func carrySupervisor(cfg Config) *Supervisor {
	return &Supervisor{cfg: cfg, log: slog.New(slog.DiscardHandler), events: make(chan func(), 8),
		done: make(chan struct{}), tookOver: make(chan struct{})}
}

// loopUntil runs s's events, as Run does, until cond holds.
func loopUntil(t *testing.T, s *Supervisor, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for !cond() {
		select {
		case f := <-s.events:
			f()
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The old primary's provisional totals reach the new one before TookOver
// closes; its final ones replace them; EOF ends the reader.
func TestCarryProvisionalThenFinal(t *testing.T) {
	payload := "provisional"
	old := carrySupervisor(Config{CarryOut: func() []byte { return []byte(payload) }})
	old.forks.Store(3)
	old.upgrades, old.reloads = 2, 1
	type got struct {
		payload string
		final   bool
	}
	in := make(chan got, 2)
	next := carrySupervisor(Config{CarryIn: func(p []byte, final bool) { in <- got{string(p), final} }})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() { next.readCarry(r); close(ended) }()
	next.awaitCarry() // told the old one "ready"

	c := newCarrier(w)
	old.sendCarry(c, false)
	loopUntil(t, next, "TookOver", func() bool {
		select {
		case <-next.tookOver:
			return true
		default:
			return false
		}
	})
	if g := <-in; g != (got{"provisional", false}) {
		t.Errorf("CarryIn got %+v; want the provisional payload", g)
	}
	if want := (Counts{Forks: 3, Reloads: 1, Upgrades: 2}); next.counts() != want {
		t.Errorf("counts after the provisional totals = %+v; want %+v", next.counts(), want)
	}

	payload = "final"
	old.crashCount = 1
	old.sendCarry(c, true)
	c.close(true)
	loopUntil(t, next, "the final totals", func() bool { return next.carried.Crashes == 1 })
	if g := <-in; g != (got{"final", true}) {
		t.Errorf("CarryIn got %+v; want the final payload", g)
	}
	next.forks.Add(2)
	if want := (Counts{Forks: 5, Crashes: 1, Reloads: 1, Upgrades: 2}); next.counts() != want {
		t.Errorf("counts after the final totals = %+v; want %+v", next.counts(), want)
	}
	select {
	case <-ended: // at EOF, once the old primary closed the pipe
	case <-time.After(5 * time.Second):
		t.Fatal("the reader did not end at EOF")
	}
}

// A new primary whose old one sends nothing serves after carryWait.
func TestCarryWaitIsBounded(t *testing.T) {
	s := carrySupervisor(Config{})
	s.awaitCarry()
	s.carryTick(time.Now().Add(carryWait + time.Millisecond))
	select {
	case <-s.tookOver:
	default:
		t.Fatal("TookOver still open past carryWait")
	}
	if !s.carryAwait.IsZero() {
		t.Error("still waiting")
	}
}
