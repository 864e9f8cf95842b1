//go:build linux

package procpool

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// The primary's pool-size messages reach the worker's PoolSize, with a
// notice on PoolSizeChanged; other lines are ignored, and EOF still means
// the primary is gone.
func TestWorkerReceivesPoolSize(t *testing.T) {
	primary, worker := net.Pipe()
	w := &Worker{ctrl: worker, gone: make(chan struct{}), poolChanged: make(chan struct{}, 1)}
	go w.watchParent()
	for _, m := range []message{{Type: "nonsense"}, {Type: msgPoolSize, Size: 0}, {Type: msgPoolSize, Size: 7}} {
		b, _ := encodeMessage(m)
		primary.Write(b)
	}
	select {
	case <-w.PoolSizeChanged():
	case <-time.After(time.Second):
		t.Fatal("no notice of the pool size")
	}
	if got := w.PoolSize(); got != 7 {
		t.Errorf("PoolSize() = %d; want 7", got)
	}
	primary.Close()
	select {
	case <-w.ParentGone():
	case <-time.After(time.Second):
		t.Fatal("EOF did not close ParentGone")
	}
}

// Scale and SetPoolSize refuse arguments out of range with ErrInvalid, and
// every control refuses with ErrStopped once Run has returned.
func TestControlsRefuse(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0", Workers: 1, MaxWorkers: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.exe = "/nonexistent/hybrid"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	for _, err := range []error{s.Scale(0), s.Scale(4), s.SetPoolSize(0), s.SetPoolSize(MaxPoolSize + 1)} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("got %v; want ErrInvalid", err)
		}
	}
	if err := s.Scale(3); err != nil {
		t.Errorf("Scale(3) = %v", err)
	}
	if got := s.Snapshot().WorkersWanted; got != 3 {
		t.Errorf("after Scale(3): %d workers wanted", got)
	}
	cancel()
	<-done
	for _, err := range []error{s.Reload(), s.Scale(1), s.SetPoolSize(1), s.Upgrade(context.Background())} {
		if !errors.Is(err, ErrStopped) {
			t.Errorf("after Run: %v; want ErrStopped", err)
		}
	}
}

// Validate takes 0 (auto) or Workers to 1024 for MaxWorkers.
func TestValidateMaxWorkers(t *testing.T) {
	for _, c := range []struct {
		workers, max int
		ok           bool
	}{{4, 0, true}, {4, 4, true}, {4, 1024, true}, {4, 3, false}, {4, 1025, false}} {
		err := Config{ListenMode: ListenShared, AcceptBalance: BalanceConns, Workers: c.workers, MaxWorkers: c.max}.Validate()
		if (err == nil) != c.ok {
			t.Errorf("workers %d, max %d: Validate() = %v; want ok %v", c.workers, c.max, err, c.ok)
		}
	}
}
