//go:build linux

package procpool

import (
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The accept board spreads connections evenly over the workers of a shared
// socket.
//
// Every worker waits in accept on the same socket, and the kernel wakes
// whichever it likes; the one that wakes first then accepts in a loop until
// the queue is empty. A burst of connections (a load balancer opening its
// keep-alive pool, a benchmark's clients) therefore lands mostly on one
// worker, and stays there for the connections' lives: measured here, 2 of 8
// connections on one worker and 6 on the other, and a CPU-bound workload on
// two workers slower than on one. Cloudflare describe the same effect for
// NGINX ("Why does one NGINX worker take all the load?", 2017).
//
// The board is one shared memory page, made by the primary and mapped by
// every worker, with one cache line per worker process: its open
// connections, and whether it accepts. Before each accept a worker that holds
// more connections than some other accepting worker steps back for a moment,
// so that the other takes the next connection. The step back is bounded
// (maxDefer), so a hung or saturated peer costs at most that much accept
// latency, and the socket, the kernel's queue and a worker's exit behave as
// without the board. SO_REUSEPORT mode needs no board: there the kernel
// hashes each connection to one worker's own queue.
const (
	boardLine   = 64 // one cache line per entry: no false sharing between workers
	deferStep   = 200 * time.Microsecond
	maxDefer    = 2 * time.Millisecond
	boardFDName = "accept-board"
)

// board is the mapped page. Entry i holds at offset i*boardLine an int32 of
// open connections, a uint32 that is 1 while the worker accepts, and a
// uint32 that is 1 while the worker is busy: it refuses new work (its
// admission's predicted wait is over its bound).
type board struct {
	mem  []byte
	file *os.File // the primary's memfd, handed to workers; nil in a worker
}

// boardEntries is how many worker processes a board tracks: every slot's
// worker and, during a reload or a recycle, its successor.
func boardEntries(workers int) int { return 2 * workers }

// newBoard creates the shared page for n entries in the primary.
func newBoard(n int) (*board, error) {
	fd, err := unix.MemfdCreate(boardFDName, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("procpool: accept board: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), boardFDName)
	size := n * boardLine
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("procpool: accept board: ftruncate: %w", err)
	}
	b, err := mapBoard(fd, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	b.file = f
	return b, nil
}

// openBoard maps the board a worker inherited on fd.
func openBoard(fd, n int) (*board, error) {
	defer unix.Close(fd) // the mapping outlives the descriptor
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("procpool: accept board on fd %d: %w", fd, err)
	}
	if st.Size != int64(n*boardLine) {
		return nil, fmt.Errorf("procpool: accept board on fd %d: %d bytes, want %d", fd, st.Size, n*boardLine)
	}
	return mapBoard(fd, n*boardLine)
}

func mapBoard(fd, size int) (*board, error) {
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("procpool: accept board: mmap: %w", err)
	}
	return &board{mem: mem}, nil
}

func (b *board) entries() int { return len(b.mem) / boardLine }

// conns and accepting point into the shared page; the page is aligned, so
// every entry's words are too.
func (b *board) conns(i int) *atomic.Int32 {
	return (*atomic.Int32)(unsafe.Pointer(&b.mem[i*boardLine]))
}

func (b *board) accepting(i int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b.mem[i*boardLine+4]))
}

func (b *board) busy(i int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&b.mem[i*boardLine+8]))
}

// clear zeroes entry i: the primary does it before a worker starts in it and
// after it exited, however it died.
func (b *board) clear(i int) {
	b.accepting(i).Store(0)
	b.conns(i).Store(0)
	b.busy(i).Store(0)
}

// behind reports whether entry me should let another accepting worker take
// the next connection: one that is not busy while me is, or one as busy as
// me that holds fewer connections.
func (b *board) behind(me int) bool {
	mine, meBusy := b.conns(me).Load(), b.busy(me).Load()
	for i := range b.entries() {
		if i == me || b.accepting(i).Load() != 1 {
			continue
		}
		if busy := b.busy(i).Load(); busy < meBusy || busy == meBusy && b.conns(i).Load() < mine {
			return true
		}
	}
	return false
}

// Close unmaps the page and, in the primary, closes the memfd.
func (b *board) Close() error {
	err := unix.Munmap(b.mem)
	if b.file != nil {
		if cerr := b.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// balancedListener is a worker's view of the shared socket with the board.
type balancedListener struct {
	net.Listener
	board *board
	me    int
	churn churn
	sleep func(time.Duration) // time.Sleep; a test may count the steps
}

func (l *balancedListener) Accept() (net.Conn, error) {
	// Churn exempts a worker from stepping back for its connection count,
	// never for being busy: a busy worker's refusals close connections
	// fast, and accepting as woken would pull their retries back to it.
	if l.board.busy(l.me).Load() == 1 || !l.churn.high(time.Now()) {
		for waited := time.Duration(0); waited < maxDefer && l.board.behind(l.me); waited += deferStep {
			l.sleep(deferStep)
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.board.conns(l.me).Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

// Close stops this worker from counting as a taker of connections at once:
// a draining worker's peers must not step back for it.
func (l *balancedListener) Close() error {
	l.board.accepting(l.me).Store(0)
	return l.Listener.Close()
}

// SyscallConn gives the shared socket's descriptor, so that a draining
// server can take what waits in the accept queue (server's listener.stop).
func (l *balancedListener) SyscallConn() (syscall.RawConn, error) {
	sc, ok := l.Listener.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("procpool: listener %T has no descriptor", l.Listener)
	}
	return sc.SyscallConn()
}

// countedConn gives its place on the board back when it closes.
type countedConn struct {
	net.Conn
	l      *balancedListener
	closed atomic.Bool
}

// NetConn returns the connection underneath, as crypto/tls's Conn does, for
// what needs the socket itself (FIONREAD, CloseWrite).
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.board.conns(c.l.me).Add(-1)
		c.l.churn.closed(time.Now())
	}
	return c.Conn.Close()
}

// churn tells whether connections come and go too fast for balancing to
// pay. Stepping back costs when the peer is slow to take the connection, and
// a short-lived connection evens out by itself: the next race for the
// socket is another draw. Measured on 2 workers with a new connection per
// request, stepping back at every imbalance cost 10-20 % of the throughput;
// with keep-alive connections it is what keeps a worker from sitting idle.
// So a worker closing connections more often than every churnGap, on
// average and lately, accepts as the kernel wakes it. A health probe every
// few seconds is far from that.
type churn struct {
	mu   sync.Mutex
	last time.Time     // the latest close
	gap  time.Duration // moving average of the time between closes
}

const churnGap = 20 * time.Millisecond // 50 closes a second

func (c *churn) closed(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.last.IsZero() {
		g := now.Sub(c.last)
		if c.gap == 0 {
			c.gap = g
		} else {
			c.gap += (g - c.gap) / 8
		}
	}
	c.last = now
}

func (c *churn) high(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gap > 0 && c.gap < churnGap && now.Sub(c.last) < churnGap*8
}
