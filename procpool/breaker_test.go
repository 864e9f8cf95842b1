package procpool

import (
	"testing"
	"time"
)

func TestBackoffDoublesUpToMax(t *testing.T) {
	b := backoff{initial: time.Second, max: 5 * time.Second}
	want := []time.Duration{1, 2, 4, 5, 5}
	for i, w := range want {
		if got := b.delay(0, time.Minute); got != w*time.Second {
			t.Errorf("delay #%d = %v; want %v", i, got, w*time.Second)
		}
	}
}

func TestBackoffResetsAfterStableRun(t *testing.T) {
	b := backoff{initial: time.Second, max: 30 * time.Second}
	b.delay(0, time.Minute)
	b.delay(0, time.Minute)
	if got := b.delay(2*time.Minute, time.Minute); got != time.Second {
		t.Errorf("delay after a stable run = %v; want %v", got, time.Second)
	}
	b.reset()
	if got := b.delay(0, time.Minute); got != time.Second {
		t.Errorf("delay after reset = %v; want %v", got, time.Second)
	}
}

func TestCrashWindowSlides(t *testing.T) {
	w := crashWindow{window: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if got := w.add(t0.Add(time.Duration(i) * time.Second)); got != i+1 {
			t.Fatalf("add #%d = %d; want %d", i, got, i+1)
		}
	}
	// The window is inclusive: a crash exactly 10s old still counts.
	if got := w.count(t0.Add(11 * time.Second)); got != 2 {
		t.Errorf("count 11s later = %d; want 2 (the first crash left the window)", got)
	}
	if got := w.count(t0.Add(12 * time.Second)); got != 1 {
		t.Errorf("count 12s later = %d; want 1", got)
	}
	if got := w.add(t0.Add(30 * time.Second)); got != 1 {
		t.Errorf("add 30s later = %d; want 1", got)
	}
	w.reset()
	if got := w.count(t0.Add(30 * time.Second)); got != 0 {
		t.Errorf("count after reset = %d; want 0", got)
	}
}
