package cache

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ClientConfig configures a [Client]. Zero fields take the defaults.
type ClientConfig struct {
	// Timeout bounds each call, the dial included; the caller's context
	// may end it sooner. Default: DefaultTimeout.
	Timeout time.Duration
	// MaxEntry is the largest value sent or accepted: a larger Put is
	// refused with ErrTooLarge before anything is sent, and a larger reply
	// is an error and closes its connection before it is read. Give it the
	// server's MaxEntry. Default: DefaultMaxEntry.
	MaxEntry int
	// Conns is the idle connections kept for reuse. A call takes an idle
	// connection or dials one, so concurrent calls never wait for each
	// other; a connection returned when Conns are idle already is closed.
	// Default: DefaultConns.
	Conns int
}

func (c ClientConfig) withDefaults() ClientConfig {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxEntry == 0 {
		c.MaxEntry = DefaultMaxEntry
	}
	if c.Conns == 0 {
		c.Conns = DefaultConns
	}
	return c
}

// Validate reports a field out of range (zero fields are the defaults).
func (c ClientConfig) Validate() error {
	if c.Timeout < 0 || c.MaxEntry < 0 || c.Conns < 0 || c.MaxEntry > maxFrameValue {
		return fmt.Errorf("cache: client timeout %v, max entry %d, conns %d: want each > 0 (or 0 for the default), max entry ≤ %d",
			c.Timeout, c.MaxEntry, c.Conns, maxFrameValue)
	}
	return nil
}

// Client is a worker's [Store] backed by the box's [Memory], served by the
// primary on a unix socket ([Memory.Serve]). Safe for concurrent use.
//
// Every error is returned (the caller counts it as a miss) and drops the
// connection it happened on, so a connection is reused only after a
// complete exchange. A call on a reused connection that finds it closed by
// the server (the server restarted, or closed it at its connection bound)
// before any reply byte is retried once on a new connection, within the
// same deadline: both requests are idempotent.
//
// Lifetimes: Get returns a value of its own, which the caller may keep and
// modify. Put does not keep v.
type Client struct {
	path string
	cfg  ClientConfig

	mu     sync.Mutex
	idle   []*clientConn
	closed bool

	hits, misses, puts, tooLarge, errs atomic.Uint64
}

type clientConn struct {
	c   net.Conn
	r   *bufio.Reader
	hdr [requestHeader]byte
}

// NewClient returns a Client of the server listening at path (the path
// [Listen] returned). It dials nothing until the first call. It panics if
// cfg.Validate fails.
func NewClient(path string, cfg ClientConfig) *Client {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	return &Client{path: path, cfg: cfg.withDefaults()}
}

// Get asks the server for k's value.
func (c *Client) Get(ctx context.Context, k Key) (v []byte, ok bool, err error) {
	rep, v, err := c.call(ctx, opGet, k, nil)
	switch {
	case err != nil:
		c.errs.Add(1)
		return nil, false, fmt.Errorf("cache: get: %w", err)
	case rep == repMiss:
		c.misses.Add(1)
		return nil, false, nil
	}
	c.hits.Add(1)
	return v, true, nil
}

// Put sends v to be stored under k and waits for the server to store it.
// ServerStats returns the server's own counts (its evictions, bytes and
// entries, which no client sees otherwise), for a worker's /health.
// It uses a connection of its own, closed after: a worker asks now and
// then, and holds no connection of the server's for it.
func (c *Client) ServerStats(ctx context.Context) (Stats, error) {
	deadline := time.Now().Add(c.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc, err := (&net.Dialer{Deadline: deadline}).DialContext(ctx, "unix", c.path)
	if err != nil {
		return Stats{}, err
	}
	defer nc.Close()
	_, v, _, err := c.exchange(ctx, &clientConn{c: nc, r: bufio.NewReaderSize(nc, readBuf)}, deadline, opStats, Key{}, nil)
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	if err := json.Unmarshal(v, &st); err != nil {
		return Stats{}, fmt.Errorf("%w: stats: %w", ErrProtocol, err)
	}
	return st, nil
}

func (c *Client) Put(ctx context.Context, k Key, v []byte) error {
	if len(v) > c.cfg.MaxEntry {
		c.tooLarge.Add(1)
		return ErrTooLarge
	}
	_, _, err := c.call(ctx, opPut, k, v)
	switch {
	case isTooLarge(err): // the server's MaxEntry is smaller than ours
		c.tooLarge.Add(1)
		return fmt.Errorf("cache: put: %w", err)
	case err != nil:
		c.errs.Add(1)
		return fmt.Errorf("cache: put: %w", err)
	}
	c.puts.Add(1)
	return nil
}

// Stats returns the counters: Hits, Misses, Puts, TooLarge and Errors.
func (c *Client) Stats() Stats {
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Puts: c.puts.Load(),
		TooLarge: c.tooLarge.Load(), Errors: c.errs.Load()}
}

func (c *Client) dropIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, cc := range idle {
		cc.c.Close()
	}
}

// Close closes the idle connections; calls after it return ErrClosed,
// and connections in use are closed when their calls end.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.dropIdle()
	return nil
}

// call runs one exchange under the call's deadline: the earlier of the
// context's and now + Timeout.
func (c *Client) call(ctx context.Context, op byte, k Key, v []byte) (rep byte, val []byte, err error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	deadline := time.Now().Add(c.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for try := 0; ; try++ {
		cc, reused, err := c.conn(ctx, deadline)
		if err != nil {
			return 0, nil, err
		}
		rep, val, started, err := c.exchange(ctx, cc, deadline, op, k, v)
		if err == nil {
			c.putIdle(cc)
			return rep, val, nil
		}
		cc.c.Close()
		if try == 0 && reused && !started && stale(err) {
			// The server closed it: it most likely closed the other idle
			// ones too (a restart), so retry on a new connection.
			c.dropIdle()
			continue
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return 0, nil, err
	}
}

// stale reports an error that a connection closed by the server gives
// the next exchange on it.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

func (c *Client) conn(ctx context.Context, deadline time.Time) (cc *clientConn, reused bool, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, false, ErrClosed
	}
	if n := len(c.idle); n > 0 {
		cc = c.idle[n-1]
		c.idle[n-1] = nil
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return cc, true, nil
	}
	c.mu.Unlock()
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, false, err
	}
	return &clientConn{c: nc, r: bufio.NewReaderSize(nc, readBuf)}, false, nil
}

func (c *Client) putIdle(cc *clientConn) {
	c.mu.Lock()
	if !c.closed && len(c.idle) < c.cfg.Conns {
		c.idle = append(c.idle, cc)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	cc.c.Close()
}

// aLongTimeAgo is a deadline in the past: it fails the I/O in progress.
var aLongTimeAgo = time.Unix(1, 0)

// exchange sends one request and reads its reply. started is true once a
// reply byte was read. Any error leaves the connection out of step: the
// caller closes it.
func (c *Client) exchange(ctx context.Context, cc *clientConn, deadline time.Time, op byte, k Key, v []byte) (rep byte, val []byte, started bool, err error) {
	if err := cc.c.SetDeadline(deadline); err != nil {
		return 0, nil, false, err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { cc.c.SetDeadline(aLongTimeAgo) })
		defer func() {
			// The deadline may have been moved into the past after the
			// exchange ended; the connection is then not reused.
			if !stop() && err == nil {
				err = ctx.Err()
			}
		}()
	}
	cc.hdr[0] = op
	copy(cc.hdr[1:33], k[:])
	if op != opPut {
		_, err = cc.c.Write(cc.hdr[:33])
	} else {
		binary.BigEndian.PutUint32(cc.hdr[33:37], uint32(len(v)))
		bufs := net.Buffers{cc.hdr[:37], v}
		_, err = bufs.WriteTo(cc.c)
	}
	if err != nil {
		return 0, nil, false, err
	}
	rep, err = cc.r.ReadByte()
	if err != nil {
		return 0, nil, false, err
	}
	switch {
	case (op == opGet || op == opStats) && rep == repHit:
		val, err = c.readValue(cc)
		return rep, val, true, err
	case op == opGet && rep == repMiss, op == opPut && rep == repStored:
		return rep, nil, true, nil
	case rep == repError:
		reason, err := cc.r.ReadByte()
		if err != nil {
			return 0, nil, true, err
		}
		switch reason {
		case reasonLarge:
			return 0, nil, true, fmt.Errorf("the server refused %d bytes: %w", len(v), ErrTooLarge)
		case reasonFull:
			return 0, nil, true, ErrFull
		}
		return 0, nil, true, fmt.Errorf("%w: the server refused the request (reason %q)", ErrProtocol, reason)
	}
	return 0, nil, true, fmt.Errorf("%w: reply %q to op %q", ErrProtocol, rep, op)
}

func (c *Client) readValue(cc *clientConn) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(cc.r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if uint64(n) > uint64(c.cfg.MaxEntry) {
		return nil, fmt.Errorf("a reply of %d bytes: %w", n, ErrTooLarge)
	}
	val := make([]byte, n)
	if _, err := io.ReadFull(cc.r, val); err != nil {
		return nil, err
	}
	return val, nil
}

var _ Store = (*Client)(nil)
