//go:build linux

package procpool

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A worker's mapping of the board sees what the primary's does: the page is
// shared, not copied.
func TestBoardIsShared(t *testing.T) {
	primary, err := newBoard(boardEntries(2))
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close()
	fd, err := unix.Dup(int(primary.file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	worker, err := openBoard(fd, primary.entries())
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	worker.conns(3).Add(5)
	worker.accepting(3).Store(1)
	if got := primary.conns(3).Load(); got != 5 {
		t.Errorf("primary sees %d connections on entry 3; want the worker's 5", got)
	}
	primary.clear(3)
	if worker.conns(3).Load() != 0 || worker.accepting(3).Load() != 0 {
		t.Error("the worker still sees entry 3 after the primary cleared it")
	}
	if _, err := openBoard(mustDup(t, primary), primary.entries()+1); err == nil {
		t.Error("a board of the wrong size opened; want an error")
	}
}

func mustDup(t *testing.T, b *board) int {
	fd, err := unix.Dup(int(b.file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestBoardBehind(t *testing.T) {
	b, err := newBoard(4)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	set := func(i int, conns int32, accepting uint32) {
		b.conns(i).Store(conns)
		b.accepting(i).Store(accepting)
	}
	set(0, 3, 1)
	set(1, 3, 1)
	if b.behind(0) || b.behind(1) {
		t.Error("a tie steps back; want both to accept")
	}
	set(1, 2, 1)
	if !b.behind(0) || b.behind(1) {
		t.Error("3 against 2: want the worker with 3 to step back, and only it")
	}
	set(1, 0, 0) // draining: it takes no connections
	set(2, 9, 0)
	if b.behind(0) {
		t.Error("stepped back for a worker that does not accept")
	}
	// Busy (refusing work) outranks the connection count.
	set(0, 1, 1)
	set(1, 5, 1)
	b.busy(0).Store(1)
	if !b.behind(0) || b.behind(1) {
		t.Error("busy with 1 connection against idle with 5: want the busy worker to step back, and only it")
	}
	b.busy(1).Store(1)
	if b.behind(0) || !b.behind(1) {
		t.Error("both busy: want the connection count to decide again")
	}
	b.clear(0)
	if b.busy(0).Load() != 0 {
		t.Error("clear left the busy flag")
	}
}

// The listener steps back while another accepting worker holds fewer
// connections, for at most maxDefer; churn turns the step back off.
func TestBalancedListenerStepsBack(t *testing.T) {
	b, err := newBoard(2)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var slept time.Duration
	l := &balancedListener{Listener: ln, board: b, me: 0, sleep: func(d time.Duration) { slept += d }}
	defer l.Close()
	b.accepting(0).Store(1)
	b.accepting(1).Store(1)
	b.conns(0).Store(1) // one ahead of a peer that never takes the connection

	accept := func() net.Conn {
		t.Helper()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := accept()
	if slept != maxDefer {
		t.Errorf("stepped back %v for a peer that never accepts; want the bound %v", slept, maxDefer)
	}
	if got := b.conns(0).Load(); got != 2 {
		t.Errorf("board says %d connections after an accept; want 2", got)
	}
	c.Close()
	c.Close() // a second close gives nothing back twice
	if got := b.conns(0).Load(); got != 1 {
		t.Errorf("board says %d connections after a close; want 1", got)
	}

	// Connections closing every millisecond: accept as woken.
	now := time.Now()
	for i := range 20 {
		l.churn.closed(now.Add(time.Duration(i) * time.Millisecond))
	}
	slept = 0
	accept()
	if slept != 0 {
		t.Errorf("stepped back %v under churn; want none", slept)
	}
	// A busy worker steps back even under churn: its fast refusals close
	// connections, and their retries belong elsewhere.
	b.busy(0).Store(1)
	slept = 0
	accept()
	if slept != maxDefer {
		t.Errorf("busy under churn: stepped back %v; want %v", slept, maxDefer)
	}
	b.busy(0).Store(0)
	if l.churn.high(now.Add(time.Second)) {
		t.Error("churn still high a second after the last close")
	}
	if l.Close(); b.accepting(0).Load() != 0 {
		t.Error("a closed listener still counts as accepting")
	}
}
