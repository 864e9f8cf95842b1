package resp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Defaults of [Options].
const (
	// DefaultTimeout bounds a call, connecting included.
	DefaultTimeout = time.Second
	// DefaultMaxReply is the largest bulk string accepted (Redis' own
	// largest string).
	DefaultMaxReply = 512 << 20
	// DefaultMaxArray is the most elements an array may have.
	DefaultMaxArray = 1024
)

// Options configures a [Client]. Zero fields take the defaults; ParseURL
// fills Addr, Username, Password, DB and TLS.
type Options struct {
	// Addr is the server's host:port.
	Addr string
	// Username and Password are sent with AUTH on connect when Password is
	// set: AUTH Username Password (a Redis 6 ACL user) when Username is
	// set too, else AUTH Password.
	Username, Password string
	// DB is selected on connect (SELECT) when not 0.
	DB int
	// TLS, when set, makes every connection TLS with this configuration;
	// an empty ServerName is the host of Addr.
	TLS *tls.Config
	// Timeout bounds each call: the wait for a connection, the dial (TLS,
	// AUTH and SELECT included), the write and the reply, together. A
	// context with an earlier deadline bounds it sooner. Default:
	// DefaultTimeout.
	Timeout time.Duration
	// PoolSize is the most connections open at once; a call finding them
	// all busy waits for one until its deadline. Default: 4 × GOMAXPROCS.
	PoolSize int
	// MaxReply is the largest bulk string accepted, and the most bytes of
	// bulk strings one reply may hold; a longer one is an error wrapping
	// ErrTooLarge, and its connection is closed unread. Default:
	// DefaultMaxReply.
	MaxReply int
	// MaxArray is the most elements an array may have, at any depth.
	// Default: DefaultMaxArray.
	MaxArray int
}

// Doer is what sends commands: a *Client, or a test's fake.
type Doer interface {
	Do(ctx context.Context, args ...any) (Value, error)
}

// Client is a pool of connections to one Redis server. See the package
// doc for its mechanism and invariants.
type Client struct {
	opt   Options
	slots chan struct{} // one token per connection open or being dialled
	idle  chan *conn    // never full: it holds PoolSize, fewer are open
	done  chan struct{} // closed by Close

	mu     sync.Mutex // orders putting a connection back against Close
	closed bool
}

// New returns a client of opt.Addr. It dials nothing until the first
// call; Close closes its connections.
func New(opt Options) *Client {
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.PoolSize <= 0 {
		opt.PoolSize = 4 * runtime.GOMAXPROCS(0)
	}
	if opt.MaxReply <= 0 {
		opt.MaxReply = DefaultMaxReply
	}
	if opt.MaxArray <= 0 {
		opt.MaxArray = DefaultMaxArray
	}
	if opt.TLS != nil && opt.TLS.ServerName == "" {
		opt.TLS = opt.TLS.Clone()
		opt.TLS.ServerName, _, _ = net.SplitHostPort(opt.Addr)
	}
	return &Client{
		opt:   opt,
		slots: make(chan struct{}, opt.PoolSize),
		idle:  make(chan *conn, opt.PoolSize),
		done:  make(chan struct{}),
	}
}

// Do sends one command, args[0] its name, and returns its reply. Each
// argument is a string, a []byte, an int or an int64, sent as a bulk
// string. An error reply of the server is a *Error, returned as it is;
// any other error is wrapped with the command's name (and never holds the
// other arguments). See the package doc for the deadline and the retry.
func (c *Client) Do(ctx context.Context, args ...any) (Value, error) {
	name, err := checkArgs(args)
	if err != nil {
		return Value{}, err
	}
	select {
	case <-c.done:
		return Value{}, fmt.Errorf("resp: %s: %w", name, ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return Value{}, fmt.Errorf("resp: %s: %w", name, err)
	}
	deadline := time.Now().Add(c.opt.Timeout)
	d, ctxDeadline := ctx.Deadline()
	if ctxDeadline = ctxDeadline && d.Before(deadline); ctxDeadline {
		deadline = d
	}
	// fail wraps an error that is not a reply: the context's error when it
	// ended the call.
	fail := func(err error) (Value, error) {
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case ctxDeadline && isTimeout(err):
			// The net.Conn's deadline, the context's, fired first.
			return Value{}, fmt.Errorf("resp: %s: %w: %w", name, context.DeadlineExceeded, err)
		}
		return Value{}, fmt.Errorf("resp: %s: %w", name, err)
	}
	fresh := false
	for {
		cn, reused, err := c.get(ctx, deadline, fresh)
		if err != nil {
			return fail(err)
		}
		v, notRun, ok, err := cn.exchange(ctx, deadline, args)
		if ok {
			c.put(cn)
		} else {
			c.discard(cn)
		}
		if err == nil {
			return v, nil
		}
		if e, isReply := err.(*Error); isReply {
			return Value{}, e
		}
		if notRun && reused && !fresh && ctx.Err() == nil && time.Now().Before(deadline) {
			fresh = true // a stale idle connection: once more, on a new one
			continue
		}
		return fail(err)
	}
}

// Close closes the idle connections, and the busy ones as their calls
// end; calls after it fail with ErrClosed. It returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	for {
		select {
		case cn := <-c.idle:
			c.discard(cn)
		default:
			return nil
		}
	}
}

// get returns an idle connection (reused) or a new one, or waits for
// either until the deadline. fresh asks for a new one only: an idle
// connection that frees first is closed, and its slot dialled anew.
func (c *Client) get(ctx context.Context, deadline time.Time, fresh bool) (cn *conn, reused bool, err error) {
	if !fresh {
		select {
		case cn := <-c.idle:
			return cn, true, nil
		default:
		}
	}
	select {
	case c.slots <- struct{}{}:
		return c.dial(ctx, deadline)
	default:
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case cn := <-c.idle:
		if !fresh {
			return cn, true, nil
		}
		cn.nc.Close() // its slot is the new one's
		return c.dial(ctx, deadline)
	case c.slots <- struct{}{}:
		return c.dial(ctx, deadline)
	case <-ctx.Done():
		return nil, false, ctx.Err()
	case <-c.done:
		return nil, false, ErrClosed
	case <-timer.C:
		return nil, false, fmt.Errorf("all %d connections busy until the deadline: %w", c.opt.PoolSize, os.ErrDeadlineExceeded)
	}
}

// dial opens a connection in the slot the caller holds, and gives the slot
// up if it fails.
func (c *Client) dial(ctx context.Context, deadline time.Time) (*conn, bool, error) {
	cn, err := c.connect(ctx, deadline)
	if err != nil {
		<-c.slots
		return nil, false, err
	}
	return cn, false, nil
}

func (c *Client) connect(ctx context.Context, deadline time.Time) (*conn, error) {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", c.opt.Addr)
	if err != nil {
		return nil, err
	}
	if c.opt.TLS != nil {
		tc := tls.Client(nc, c.opt.TLS)
		nc.SetDeadline(deadline)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	cn := &conn{nc: nc, w: bufio.NewWriter(nc)}
	cn.rd = reader{r: bufio.NewReader(nc), maxBulk: c.opt.MaxReply, maxArray: c.opt.MaxArray}
	var setup [][]any
	switch {
	case c.opt.Password != "" && c.opt.Username != "":
		setup = append(setup, []any{"AUTH", c.opt.Username, c.opt.Password})
	case c.opt.Password != "":
		setup = append(setup, []any{"AUTH", c.opt.Password})
	}
	if c.opt.DB != 0 {
		setup = append(setup, []any{"SELECT", c.opt.DB})
	}
	for _, args := range setup {
		_, _, ok, err := cn.exchange(ctx, deadline, args)
		if err == nil && !ok {
			err = ctx.Err()
		}
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("connecting: %s: %w", args[0], err)
		}
	}
	return cn, nil
}

// put pools a connection that is fine, or closes it after Close.
func (c *Client) put(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cn.nc.Close()
		<-c.slots
		return
	}
	c.idle <- cn
}

// discard closes a connection and frees its slot.
func (c *Client) discard(cn *conn) {
	cn.nc.Close()
	<-c.slots
}

// conn is one connection and its buffers.
type conn struct {
	nc       net.Conn
	w        *bufio.Writer
	rd       reader
	num, hdr [24]byte
}

// longAgo is a deadline in the past: a blocked read or write returns.
var longAgo = time.Unix(1, 0)

// exchange sends args and reads the reply by the deadline, or until ctx
// is done. notRun reports that the command cannot have run: the write
// failed, or the peer closed or reset the connection before a byte of the
// reply. ok reports that the connection may be pooled again: no error, or
// an error reply.
func (cn *conn) exchange(ctx context.Context, deadline time.Time, args []any) (v Value, notRun, ok bool, err error) {
	if err := cn.nc.SetDeadline(deadline); err != nil {
		return Value{}, false, false, err
	}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { cn.nc.SetDeadline(longAgo) })
	}
	v, notRun, err = cn.roundTrip(args)
	// A cancellation that fired may move the deadline at any time: the
	// connection is not pooled again.
	cancelled := !stop()
	var e *Error
	ok = !cancelled && (err == nil || errors.As(err, &e))
	return v, notRun, ok, err
}

func (cn *conn) roundTrip(args []any) (v Value, notRun bool, err error) {
	cn.writeCommand(args)
	if err := cn.w.Flush(); err != nil {
		// The server has not all of the command: it did not run it.
		return Value{}, !isTimeout(err), err
	}
	if _, err := cn.rd.r.Peek(1); err != nil {
		return Value{}, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), err
	}
	v, err = cn.rd.read()
	if err == nil && v.Kind == '-' {
		return Value{}, false, &Error{Msg: string(v.Str)}
	}
	return v, false, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeCommand writes args as an array of bulk strings into the buffer;
// an error is Flush's.
func (cn *conn) writeCommand(args []any) {
	cn.header('*', len(args))
	for _, a := range args {
		switch a := a.(type) {
		case string:
			cn.header('$', len(a))
			cn.w.WriteString(a)
		case []byte:
			cn.header('$', len(a))
			cn.w.Write(a)
		case int:
			n := strconv.AppendInt(cn.num[:0], int64(a), 10)
			cn.header('$', len(n))
			cn.w.Write(n)
		case int64:
			n := strconv.AppendInt(cn.num[:0], a, 10)
			cn.header('$', len(n))
			cn.w.Write(n)
		}
		cn.w.WriteString("\r\n")
	}
}

func (cn *conn) header(kind byte, n int) {
	b := append(cn.hdr[:0], kind)
	b = strconv.AppendInt(b, int64(n), 10)
	cn.w.Write(append(b, '\r', '\n'))
}

// checkArgs checks the arguments' types, and returns the command's name
// for errors.
func checkArgs(args []any) (string, error) {
	if len(args) == 0 {
		return "", errors.New("resp: no command")
	}
	for i, a := range args {
		switch a.(type) {
		case string, []byte, int, int64:
		default:
			return "", fmt.Errorf("resp: argument %d is a %T; want a string, []byte, int or int64", i, a)
		}
	}
	var name string
	switch a := args[0].(type) {
	case string:
		name = a
	case []byte:
		name = string(a)
	default:
		return "", errors.New("resp: the command's name is a number")
	}
	if len(name) > 32 {
		name = name[:32]
	}
	return name, nil
}
