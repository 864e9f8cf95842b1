package procpool

import "time"

// crashWindow counts crashes within a sliding window of time. It is the
// circuit breaker's memory: the circuit opens when more than max crashes fall
// within the window.
type crashWindow struct {
	window time.Duration
	times  []time.Time
}

// add records a crash at now and returns the number of crashes in the window.
func (w *crashWindow) add(now time.Time) int {
	w.times = append(w.times, now)
	return w.count(now)
}

// count returns the number of crashes within the window ending at now.
func (w *crashWindow) count(now time.Time) int {
	cut := 0
	for cut < len(w.times) && now.Sub(w.times[cut]) > w.window {
		cut++
	}
	w.times = w.times[cut:]
	return len(w.times)
}

func (w *crashWindow) reset() { w.times = w.times[:0] }

// backoff is the exponential restart delay of one worker slot.
type backoff struct {
	initial, max time.Duration
	next         time.Duration
}

// delay returns the wait before the next restart and doubles the one after
// it, up to max. A worker that stayed up for stableFor or longer before it
// crashed resets the sequence: one crash after a long healthy run is not a
// loop.
func (b *backoff) delay(uptime, stableFor time.Duration) time.Duration {
	if b.next == 0 || uptime >= stableFor {
		b.next = b.initial
	}
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

func (b *backoff) reset() { b.next = 0 }
