package procpool

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A worker binary that cannot be executed is retried with backoff, counted
// as crashes, and stopped by the circuit breaker: never a silent empty slot,
// never a loop.
func TestExecFailureIsRetriedThenBreaks(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0", Workers: 1, RestartBackoff: 10 * time.Millisecond,
		RestartBackoffMax: 20 * time.Millisecond, MaxCrashes: 2, CrashWindow: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.exe = "/nonexistent/hybrid"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for s.Snapshot().Circuit != "open" {
		if time.Now().After(deadline) {
			t.Fatalf("circuit never opened: %+v", s.Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if snap := s.Snapshot(); snap.CrashesInWindow != 3 || snap.Forks != 0 {
		t.Errorf("after exec failures: %+v; want 3 crashes (max 2, then open) and no fork", snap)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	err := Config{ListenMode: "udp", Workers: 0, RestartBackoff: time.Minute, RestartBackoffMax: time.Second,
		HeartbeatInterval: time.Second, HeartbeatTimeout: time.Second}.Validate()
	for _, want := range []string{"listen mode", "workers 0", "exceeds its max", "heartbeat timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to mention %q", err, want)
		}
	}
}
