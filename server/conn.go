package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// How a worker ends its connections.
//
// Every accepted connection is wrapped in a [conn] that knows whether a
// request is under way on it (busy) or not (idle: accepted and nothing read
// yet, or between keep-alive requests). That is what the two ways of ending a
// connection gently need.
//
// Lingering close. After an early error response (fasthttp's ErrorHandler: a
// body over the limit, headers too large, a malformed request, a read
// timeout) the client may still be sending, and closing a socket with unread
// data makes the kernel send RST, which can destroy the response before the
// client reads it. Clients that write the whole body before reading (Python's
// urllib and requests) then see "connection reset" instead of the 413. So
// such a connection, and any connection closed with unread bytes, is closed
// as nginx's lingering_close and Go's net/http do: shut down the write side
// (the client reads the response, then EOF), read and discard what the client
// still sends, and close once it closes its side or a bound is reached. The
// bounds are twice Config.MaxBody or [lingerMinBytes], whichever is more,
// [lingerTimeout]
// and [lingerIdle], with at most [lingerMax] lingering at once.
//
// Drain. A worker that drains must not close a keep-alive connection under
// a client that is about to send on it: the request is lost, and the client
// cannot tell whether it was served. So [Server.Shutdown] ends each
// connection at a request boundary: the next response on it says
// Connection: close and fasthttp closes after it; a connection that stays
// idle past Config.DrainGrace is ended only after a check (FIONREAD) that no
// request byte waits unread in its socket, by making its pending read return
// EOF, which fasthttp takes as the client's own close.
const (
	// lingerMinBytes is the least one lingering close discards; the bound is
	// this or twice the body limit (Config.MaxBody), whichever is more, so
	// that a client whose body is far over the limit still reads its 413,
	// while one that streams without end costs at most this much reading
	// (tens of milliseconds of CPU on loopback).
	lingerMinBytes = 64 << 20
	// lingerMax bounds the connections lingering at once per worker: each
	// holds a descriptor and a goroutine for up to lingerTimeout, and
	// fasthttp no longer counts it against its connection limit. Beyond
	// this, a connection closes at once, as without lingering.
	lingerMax = 512
	// lingerTimeout bounds a lingering close in all: nginx's
	// lingering_time is 30 s; a client that is still writing after 10 s
	// on a connection the server has finished with is not going to read.
	lingerTimeout = 10 * time.Second
	// lingerIdle ends a lingering close when the client sends nothing for
	// this long: a client that has written its request reads the response
	// and closes within a round trip; nginx's lingering_timeout is 5 s.
	lingerIdle = 2 * time.Second
	// lingerBuf is the discard buffer of one lingering read.
	lingerBuf = 8 << 10

	// sweepMax bounds the connections a draining listener takes from the
	// accept queue before it closes; see [listener.stop].
	sweepMax = 4096
)

// A connection's phase.
const (
	phaseIdle    int32 = iota // no request under way: accepted and nothing read, or between requests
	phaseBusy                 // a request is being read, handled or answered
	phaseExpired              // ended by a drain while idle: its next read returns EOF
	phaseClosed               // closed, or closing by lingering
)

// aLongTimeAgo is a deadline in the past: it makes a blocked read return at
// once.
var aLongTimeAgo = time.Unix(1, 0)

// conns is a server's set of open connections, and the limits the
// requests on them are held to.
type conns struct {
	readTimeout time.Duration // what a connection's read deadline returns to when a drain's expiry is undone
	bodyIdle    time.Duration // how long a body read may wait for a byte (Config.BodyIdleTimeout)
	lingerBytes int           // what one lingering close discards at most
	lingering   atomic.Int32  // lingering closes under way, at most lingerMax
	bodies      *bodyBudget   // what the requests' bodies reserve from (body.go)
	maxConns    int           // connections served at once; beyond, refused (see admit)
	maxPerIP    int           // connections served at once per client address; 0: no limit
	refusals    [2][]byte     // the responses of a refused connection: over maxConns, over maxPerIP
	refused     atomic.Uint64 // connections refused for the limits

	mu      sync.Mutex
	set     map[*conn]struct{}
	serving int                // connections in set handed to fasthttp and not closed
	perIP   map[netip.Addr]int // serving, per client address (with maxPerIP only)

	closedIdle atomic.Int64 // ended by a drain while idle
	lingered   atomic.Int64 // closed by lingering
}

// conn is an accepted connection as the server tracks it.
type conn struct {
	net.Conn
	set *conns
	raw syscall.RawConn                 // the socket, for FIONREAD; nil if not a socket
	fd  int                             // its descriptor, read once at accept; -1 if none
	cw  interface{ CloseWrite() error } // the socket's write side; nil if none

	phase atomic.Int32 // changed under mu; read without it on the hot path

	mu        sync.Mutex
	idleSince time.Time
	linger    bool // an early error response was written: close by lingering

	served    int        // requests answered; only fasthttp's goroutine for c uses it
	deadline  time.Time  // the read deadline fasthttp set last; only its goroutine for c uses it
	bodyDead  bool       // a body read set a shorter deadline (readBody); same goroutine
	counted   bool       // counted in set.serving (and set.perIP under ip); set once, under set.mu
	ip        netip.Addr // the client's address; zero if not counted per address
	closeOnce sync.Once
	closeErr  error
}

// track wraps a freshly accepted connection and adds it to the set. If
// the connection is over one of the connection limits, it also returns
// the response to refuse it with (see refuse).
func (cs *conns) track(nc net.Conn) (c *conn, refusal []byte) {
	c = &conn{Conn: nc, set: cs, idleSince: time.Now()}
	inner := netConn(nc)
	c.fd = -1
	if sc, ok := inner.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
		if c.raw != nil {
			c.raw.Control(func(fd uintptr) { c.fd = int(fd) })
		}
	}
	c.cw, _ = inner.(interface{ CloseWrite() error })
	var ip netip.Addr
	if cs.maxPerIP > 0 {
		if a, ok := inner.RemoteAddr().(*net.TCPAddr); ok {
			ip = a.AddrPort().Addr().Unmap()
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.set == nil {
		cs.set = make(map[*conn]struct{})
	}
	cs.set[c] = struct{}{}
	switch {
	case cs.maxConns > 0 && cs.serving >= cs.maxConns:
		return c, cs.refusals[0]
	case ip.IsValid() && cs.perIP[ip] >= cs.maxPerIP:
		return c, cs.refusals[1]
	}
	c.counted = true
	cs.serving++
	if ip.IsValid() {
		if cs.perIP == nil {
			cs.perIP = make(map[netip.Addr]int)
		}
		c.ip = ip
		cs.perIP[ip]++
	}
	return c, nil
}

// uncount takes a closing connection out of the limits' counts.
func (cs *conns) uncount(c *conn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !c.counted {
		return
	}
	c.counted = false
	cs.serving--
	if c.ip.IsValid() {
		if cs.perIP[c.ip]--; cs.perIP[c.ip] <= 0 {
			delete(cs.perIP, c.ip)
		}
	}
}

// refuse answers a connection over a connection limit, which fasthttp never
// sees, and closes it by lingering: the client reads the JSON error (503,
// or 429 for its address's limit) instead of a reset. The response is
// small and the socket's send buffer empty, so the write does not block
// the accept loop; the deadline is a guard.
func (c *conn) refuse(resp []byte) {
	c.set.refused.Add(1)
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.Conn.Write(resp)
	c.lingerOnClose()
	c.Close()
}

// refusalOf is the whole HTTP response to a connection refused with e.
func refusalOf(e *Error) []byte {
	var body errorBody
	body.Error.Code, body.Error.Message = e.Code, e.Message
	b, _ := json.Marshal(body)
	b = append(b, '\n')
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"+
		"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s", e.Status, fasthttp.StatusMessage(e.Status), len(b), b)
}

// netConn unwraps nc down to the connection the kernel knows, through the
// NetConn method that wrappers such as procpool's counted connection (and
// crypto/tls) have.
func netConn(nc net.Conn) net.Conn {
	for {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nc
		}
		nc = u.NetConn()
	}
}

func (cs *conns) remove(c *conn) {
	cs.mu.Lock()
	delete(cs.set, c)
	cs.mu.Unlock()
}

// open returns how many connections are open, lingering ones included.
func (cs *conns) open() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.set)
}

// expireIdle ends every connection idle for at least grace with no request
// byte waiting, and returns how many connections are still open.
func (cs *conns) expireIdle(now time.Time, grace time.Duration) int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c := range cs.set {
		c.expireIfIdle(now, grace)
	}
	return len(cs.set)
}

// expireIfIdle makes c's pending read return EOF if c has been idle for at
// least grace and no request byte waits in its socket. A byte that arrives
// later, before the read returns, undoes it (see Read).
func (c *conn) expireIfIdle(now time.Time, grace time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.phase.Load() == phaseExpired && c.raw != nil {
		// Again, in case fasthttp set its own deadline after ours.
		c.Conn.SetReadDeadline(aLongTimeAgo)
		return
	}
	if c.phase.Load() != phaseIdle || now.Sub(c.idleSince) < grace || c.unread() > 0 {
		return
	}
	c.phase.Store(phaseExpired)
	if c.raw == nil {
		// Not a socket (an in-memory pipe in tests): no unread count to
		// go by, and its deadlines need not wake a blocked read. Close.
		c.set.closedIdle.Add(1)
		c.Conn.Close()
		return
	}
	c.Conn.SetReadDeadline(aLongTimeAgo)
}

// Read marks c busy once bytes of a request arrive, and turns the read
// deadline a drain set (see expireIfIdle) into EOF, unless request bytes
// came in meanwhile: then the read goes on, and the request is served.
func (c *conn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if n > 0 {
			if c.phase.Load() != phaseBusy {
				c.busy()
			}
			return n, err
		}
		if err == nil || c.phase.Load() != phaseExpired || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		if !c.unexpire() {
			c.set.closedIdle.Add(1)
			return 0, io.EOF
		}
	}
}

// SetReadDeadline is fasthttp's: the request's read timeout, or the idle
// timeout between requests. c keeps it, for the body reads that set a
// shorter one (readBody).
func (c *conn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetReadDeadline(t)
}

// readBody reads from r, a request body on c, with c's read deadline
// brought forward to Config.BodyIdleTimeout from now if that is earlier
// than fasthttp's: a body that sends nothing for that long ends (body.go).
// idle reports that the read failed at that deadline. It runs on
// fasthttp's goroutine for c, as the handler does.
func (c *conn) readBody(r io.Reader, p []byte) (n int, idle bool, err error) {
	d := c.set.bodyIdle
	if d <= 0 {
		n, err = r.Read(p)
		return n, false, err
	}
	at := time.Now().Add(d)
	short := c.deadline.IsZero() || at.Before(c.deadline)
	switch {
	case short:
		c.Conn.SetReadDeadline(at)
		c.bodyDead = true
	case c.bodyDead:
		c.Conn.SetReadDeadline(c.deadline)
		c.bodyDead = false
	}
	n, err = r.Read(p)
	// fasthttp may wrap the timeout (a chunk's size line): go by the clock.
	return n, err != nil && short && !time.Now().Before(at), err
}

// endBodyReads gives c back the read deadline fasthttp set, once a body
// has been read.
func (c *conn) endBodyReads() {
	if c.bodyDead {
		c.bodyDead = false
		c.Conn.SetReadDeadline(c.deadline)
	}
}

// busy marks c as serving a request. If a drain had just expired it, the
// read deadline goes back to a request's.
func (c *conn) busy() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.phase.Load() {
	case phaseIdle:
		c.phase.Store(phaseBusy)
	case phaseExpired:
		c.phase.Store(phaseBusy)
		c.restoreDeadline()
	}
}

// unexpire undoes a drain's expiry if request bytes wait unread: it reports
// whether the read should go on.
func (c *conn) unexpire() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.phase.Load() != phaseExpired || c.unread() == 0 {
		return false
	}
	c.phase.Store(phaseBusy)
	c.restoreDeadline()
	return true
}

func (c *conn) restoreDeadline() {
	var d time.Time
	if c.set.readTimeout > 0 {
		d = time.Now().Add(c.set.readTimeout)
	}
	c.Conn.SetReadDeadline(d)
}

// idle marks c as between requests. It runs on fasthttp's goroutine for c,
// from the ConnState hook.
func (c *conn) idle() {
	c.served++
	c.mu.Lock()
	if c.phase.Load() == phaseBusy {
		c.phase.Store(phaseIdle)
	}
	c.idleSince = time.Now()
	c.mu.Unlock()
}

// active is fasthttp's StateActive. On a keep-alive connection it means a
// request has begun (a pipelined one may need no read); on a new connection
// fasthttp reports it before reading anything, so it is left to Read.
func (c *conn) active() {
	if c.served > 0 && c.phase.Load() != phaseBusy {
		c.busy()
	}
}

// lingerOnClose makes Close linger: an early error response has been
// written and the client may still be sending.
func (c *conn) lingerOnClose() {
	c.mu.Lock()
	c.linger = true
	c.mu.Unlock()
}

// Close closes c by lingering (see the package's notes above) if an early
// error response was written on it or request bytes wait unread in its
// socket, and at once otherwise. A lingering close happens on its own
// goroutine and keeps c in the open set until it ends, so that a drain waits
// for it; Close returns at once either way.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		linger := c.linger && c.phase.Load() != phaseExpired
		c.phase.Store(phaseClosed)
		c.mu.Unlock()
		c.set.uncount(c) // a lingering close is no longer served
		if c.cw != nil && (linger || c.unread() > 0) {
			if c.set.lingering.Add(1) <= lingerMax {
				c.set.lingered.Add(1)
				go c.lingerClose()
				return
			}
			c.set.lingering.Add(-1) // over lingerMax: close at once
		}
		c.closeErr = c.Conn.Close()
		c.set.remove(c)
	})
	return c.closeErr
}

var lingerBufs = sync.Pool{New: func() any { return new([lingerBuf]byte) }}

// lingerClose shuts down c's write side, which fasthttp has flushed, then
// reads and discards until the client closes or a bound is reached, then
// closes.
func (c *conn) lingerClose() {
	defer func() {
		c.Conn.Close()
		c.set.remove(c)
		c.set.lingering.Add(-1)
	}()
	if c.cw.CloseWrite() != nil {
		return
	}
	buf := lingerBufs.Get().(*[lingerBuf]byte)
	defer lingerBufs.Put(buf)
	end := time.Now().Add(lingerTimeout)
	limit := max(c.set.lingerBytes, lingerMinBytes)
	for discarded := 0; discarded < limit; {
		d := time.Now().Add(lingerIdle)
		if d.After(end) {
			d = end
		}
		if c.Conn.SetReadDeadline(d) != nil {
			return
		}
		n, err := c.Conn.Read(buf[:min(len(buf), limit-discarded)])
		discarded += n
		if err != nil {
			return
		}
	}
}

// unread returns how many bytes wait unread in c's socket; 0 if c is not a
// socket.
func (c *conn) unread() int {
	if c.raw == nil {
		return 0
	}
	return unreadBytes(c.raw)
}

// arrived is unread for the request path, without the allocation of a
// RawConn.Control closure: the descriptor read at accept, valid while the
// connection's handler runs (the connection cannot be closed under it).
func (c *conn) arrived() int {
	if c.fd < 0 {
		return 0
	}
	return unreadFD(c.fd)
}

// listener is the server's view of its listening socket: it tracks every
// connection it hands to fasthttp, signals the first Accept, and stops as
// a drain needs (see stop).
type listener struct {
	net.Listener
	s *Server

	mu      sync.Mutex
	stopped bool
	held    int     // a duplicate of the socket's descriptor from stop to the sweep; -1 if none
	swept   []*conn // taken from the accept queue by the sweep, not yet handed out
}

func (l *listener) Accept() (net.Conn, error) {
	l.s.acceptOne.Do(func() { close(l.s.accepting) })
	nc, err := l.Listener.Accept()
	for err == nil {
		c, refusal := l.s.conns.track(nc)
		if refusal == nil {
			return c, nil
		}
		c.refuse(refusal)
		nc, err = l.Listener.Accept()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		return nil, err
	}
	if l.held >= 0 {
		// ln is closed and this goroutine's hold on its descriptor is
		// gone: the socket lives on the held duplicate alone (and in
		// other workers). Take what waits, then let go.
		for _, nc := range sweep(l.held, sweepMax) {
			if c, refusal := l.s.conns.track(nc); refusal == nil {
				l.swept = append(l.swept, c)
			} else {
				c.refuse(refusal)
			}
		}
		l.held = -1
	}
	if len(l.swept) > 0 {
		c := l.swept[0]
		l.swept = l.swept[1:]
		return c, nil
	}
	return nil, err
}

// stop ends accepting without resetting what the kernel has queued: it
// closes ln but keeps a duplicate of its descriptor, and once the accept
// loop sees the close, Accept takes every connection still in the socket's
// accept queue (at most sweepMax) with non-blocking accepts, closes the
// duplicate at once, and hands those connections out before it reports the
// close. The descriptor is released one system call after its last accept,
// so the last worker to close a shared socket leaves (all but certainly)
// nothing queued to be reset. On a reload the sweep takes only what was
// queued at that instant, which it serves with Connection: close; the new
// worker takes the rest. stop is idempotent.
func (l *listener) stop() error {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return nil
	}
	l.stopped = true
	l.held = holdListener(l.Listener)
	l.mu.Unlock()
	return l.Listener.Close()
}

// release closes the held descriptor if the accept loop ended without
// sweeping (Serve failed). The queue is lost then, as without a sweep.
func (l *listener) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held >= 0 {
		unreleased := l.held
		l.held = -1
		closeFD(unreleased)
	}
}

// Close is stop: fasthttp's own shutdown closes its listeners too.
func (l *listener) Close() error { return l.stop() }
