package server

import (
	"errors"
	"io"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// A worker's server streams request bodies (fasthttp's StreamRequestBody):
// a handler runs once the headers are in, and reads the body with [Body],
// or not at all. That lets a handler refuse work before the body is read
// (an overloaded pool answers 503 from the headers), so that a refused
// request costs no body buffer: the body is discarded by the lingering close
// instead. fasthttp's stream mode does not enforce the body limit itself
// (a body over it, or a chunked one of any length, reaches the handler), so
// Body does, and Server.serve ends any connection whose body was left
// unread.

// Memory per request body is bounded three ways: by the body limit
// (Config.MaxBody); by the worker's budget of body bytes in flight
// (Config.MaxInflightBody), from which a body reserves its buffer as it
// grows, so that however many clients upload at once the bodies held stay
// within it; and by growing that buffer only as bytes arrive. (fasthttp
// itself reads the first 8 KiB of a body, into the connection's own
// buffer, before any handler runs.)
//
// A body reserves as it arrives, never ahead of it. Its first buffer
// starts at [minBodyBuf] (or its declared length, if smaller) and doubles
// each time it fills, up to [bodyChunk]; past that the body is read into
// chunks of bodyChunk, each reserved as it is taken. A body that declared
// its length moves, once it has sent half of it, into one buffer of that
// length, reserving the rest of it (the chunks return to their pool once
// copied); a chunked body is copied into one buffer of its length once it
// is whole. A handler gets one contiguous []byte either way. (The move at
// half is what lets large uploads at once finish one after another: a
// body in its one buffer needs no more room. Reading to the end in
// chunks, four 32 MiB uploads at once each held 28 MiB of the 112 they
// may use, and three got 503.) A body therefore holds at most twice what its client has sent, plus the first
// step, whatever length it declared: a client that declares 32 MiB and
// stalls holds 16 KiB, not 32 MiB. (Reserving the declared length up
// front, as this did before, let ~260 stalled connections that had sent
// 15 MB in all hold a worker's whole 128 MiB, and every body after them
// got 503.)
//
// The chunks, and every buffer up to [maxPooledBody], come from pools by
// powers of two ([getBuf]), so that a large body leaves no garbage behind
// but its one final buffer. (Doubling one buffer to the body's length, as
// this did before, left a chain of dead buffers, 1+2+4+8+16 MiB for a 32
// MiB body, for the garbage collector: ten uploads refused part-way took a
// worker from 111 MiB to 290 MiB.) The reservation is the bytes a body may
// hold; a pooled buffer's capacity is the power of two at or above them.
// While a body's chunks are copied into its final buffer both are
// counted, but only the final buffer's growth must fit: a body is never
// refused for bytes it is about to return.
//
// A body whose next step does not fit waits up to [budgetWait] for room
// (a body finishing, or refused, frees its share), then gets 503
// overloaded: an upload under way may be refused part-way on a worker
// whose budget is full of other uploads; on a worker with room, an upload
// within the limit never is. A body's first step is refused at once: the
// client retries (Retry-After), and a worker at its limit holds no waiting
// request it has not started.
//
// Bodies that declare more than [smallBody] may use only 7/8 of the
// budget, so that large uploads, stalled or not, never refuse the small
// requests most clients make (the last eighth, 16 MiB by default, is 256
// bodies of 64 KiB at once, and far more smaller ones). A chunked body
// counts as large once it has grown past smallBody.
//
// A body that makes no progress ends: a read that gets no byte for
// Config.BodyIdleTimeout (10 s by default) is a 408, as nginx's
// client_body_timeout does, so a stalled client holds what it sent for
// that long at most, and the whole request for the read timeout.

// bodyBudget is a worker's budget of request-body bytes in flight: the
// buffers of the bodies being read or held by their handlers.
type bodyBudget struct {
	limit   int64
	used    atomic.Int64
	refused atomic.Uint64

	waiters atomic.Int32 // bodies waiting for room (reserve)
	mu      sync.Mutex
	freed   chan struct{} // closed when reservations return while bodies wait
}

// smallBody is the largest body that may use the whole budget; larger
// ones may use 7/8 of it.
const smallBody = 64 << 10

// budgetWait bounds how long a body under way waits for room in the
// budget before its 503: bodies in flight are served within about a
// task's time, and a client whose upload is refused part-way has lost it.
const budgetWait = time.Second

// tryTake reserves n bytes for a body that declares (or has grown to)
// total bytes, if they fit.
func (b *bodyBudget) tryTake(n, total int) bool {
	limit := b.limit
	if total > smallBody {
		limit -= b.limit / 8
	}
	for {
		used := b.used.Load()
		if used+int64(n) > limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+int64(n)) {
			return true
		}
	}
}

// take reserves n bytes for a body of total bytes (see tryTake), waiting
// up to wait for room, and reports whether it did. A nil budget has room
// for everything.
func (b *bodyBudget) take(n, total int, wait time.Duration) bool {
	if b == nil || n <= 0 || b.tryTake(n, total) {
		return true
	}
	if wait > 0 {
		b.waiters.Add(1)
		defer b.waiters.Add(-1)
		t := time.NewTimer(wait)
		defer t.Stop()
		for {
			b.mu.Lock()
			if b.freed == nil {
				b.freed = make(chan struct{})
			}
			freed := b.freed
			b.mu.Unlock()
			// Look again once registered: a give before it is seen here.
			if b.tryTake(n, total) {
				return true
			}
			select {
			case <-freed:
				continue
			case <-t.C:
			}
			break
		}
	}
	b.refused.Add(1)
	return false
}

// give returns n reserved bytes, and wakes the bodies waiting for room.
func (b *bodyBudget) give(n int) {
	if b == nil || n <= 0 {
		return
	}
	b.used.Add(-int64(n))
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		if b.freed != nil {
			close(b.freed)
			b.freed = nil
		}
		b.mu.Unlock()
	}
}

// hold counts n bytes that a body holds for a moment without the room
// for them: its chunks while they are copied into its whole buffer, which
// it has reserved. They are never refused: they return at once.
func (b *bodyBudget) hold(n int) {
	if b != nil && n > 0 {
		b.used.Add(int64(n))
	}
}

// fits reports whether a body of n bytes would fit now, without reserving
// it.
func (b *bodyBudget) fits(n int) bool {
	if b == nil || n <= 0 {
		return true
	}
	limit := b.limit
	if n > smallBody {
		limit -= b.limit / 8
	}
	return b.used.Load()+int64(n) <= limit
}

const (
	// minBodyBuf is a body's first step: what a body reserves, and
	// its buffer holds, before the first byte past fasthttp's 8 KiB
	// arrives. With --max-conns 4096, all of them stalled at once hold
	// 64 MiB of the budget.
	minBodyBuf = 16 << 10
	// bodyChunk is the size of the chunks a body past its first buffer
	// is read into: what a body holds beyond what it has sent, and what
	// a body's reservation grows by.
	bodyChunk = 256 << 10
	// maxPooledBody is the largest body buffer kept for reuse: a pool of
	// buffers as large as the body limit would hold that much per worker
	// after one burst of large uploads.
	maxPooledBody = 4 << 20
)

// bodyBufs pools body buffers by capacity: bodyBufs[i] holds buffers of
// minBodyBuf<<i bytes, up to maxPooledBody (16 KiB to 4 MiB).
var bodyBufs [9]sync.Pool

func init() {
	bodyStates.New = func() any {
		s := new(bodyState)
		s.release = s.free
		return s
	}
	for i := range bodyBufs {
		size := minBodyBuf << i
		bodyBufs[i].New = func() any {
			b := make([]byte, 0, size)
			return &b
		}
	}
}

// bufClass is the index in bodyBufs of the smallest buffer of at least n
// bytes, n at most maxPooledBody.
func bufClass(n int) int {
	if n <= minBodyBuf {
		return 0
	}
	return bits.Len(uint(n-1)) - bits.Len(minBodyBuf-1)
}

// getBuf returns an empty buffer of at least n bytes: from the pools up
// to maxPooledBody, of the power of two at or above n; else new, of n.
func getBuf(n int) *[]byte {
	if n > maxPooledBody {
		b := make([]byte, 0, n)
		return &b
	}
	return bodyBufs[bufClass(n)].Get().(*[]byte)
}

// putBuf returns a buffer from getBuf to its pool, if it has one.
func putBuf(bp *[]byte) {
	if bp == nil {
		return
	}
	c := cap(*bp)
	if c < minBodyBuf || c > maxPooledBody || c&(c-1) != 0 {
		return
	}
	*bp = (*bp)[:0]
	bodyBufs[bufClass(c)].Put(bp)
}

// nextStep is what a body that has reserved held bytes reserves next, up
// to end, its declared length or one byte over the limit: as much again
// (at least minBodyBuf) while it fits its first buffer, then a chunk.
func nextStep(held, end int) int {
	if held >= bodyChunk {
		return min(bodyChunk, end-held)
	}
	return min(max(held, minBodyBuf), end-held)
}

// bodyState is what a body being read, or held by its handler, holds: its
// reservation and its buffers. It is pooled, with its release func bound
// once, so that Body allocates nothing for a body that fits the pools.
type bodyState struct {
	budget  *bodyBudget
	held    int       // what the body has reserved, and the most its buffers hold
	bp      *[]byte   // the buffer being filled, or the whole body
	chunks  []*[]byte // full chunks before bp
	release func()    // s.free
}

var bodyStates sync.Pool // of *bodyState; New set in init

// free returns s's reservation and buffers, and s to its pool.
func (s *bodyState) free() {
	s.budget.give(s.held)
	for i, cp := range s.chunks {
		putBuf(cp)
		s.chunks[i] = nil
	}
	putBuf(s.bp)
	s.budget, s.held, s.bp, s.chunks = nil, 0, nil, s.chunks[:0]
	bodyStates.Put(s)
}

// whole copies the body, s's chunks and then b, size bytes in all, into
// one buffer of at least n bytes, returns the chunks to their pool, and
// returns the new buffer. Both are counted while the copy runs.
func (s *bodyState) whole(b []byte, size, n int) []byte {
	s.budget.hold(size)
	nbp := getBuf(n)
	nb := (*nbp)[:0]
	for i, cp := range s.chunks {
		nb = append(nb, (*cp)[:bodyChunk]...) // full
		putBuf(cp)
		s.chunks[i] = nil
	}
	nb = append(nb, b...)
	putBuf(s.bp)
	s.budget.give(size)
	s.bp, s.chunks = nbp, s.chunks[:0]
	return nb
}

func noRelease() {}

// Body returns the request's body, at most limit bytes, and release, which
// the caller calls once, when it no longer uses the body (the buffer is
// reused and its bytes return to the worker's budget); release may come
// after the response is sent. A body over limit is a 413 body_too_large,
// one that does not fit the worker's budget of bodies in flight a 503
// overloaded (with Retry-After), a malformed chunked body a 400
// bad_request, a body not received within the read timeout, or that sends
// nothing for Config.BodyIdleTimeout, a 408; each *Error also closes the
// connection by lingering, since the rest of the body may still be on its
// way.
func Body(ctx *fasthttp.RequestCtx, limit int) (body []byte, release func(), err error) {
	if !ctx.Request.IsBodyStream() { // not a streaming server (a test's RequestCtx)
		return ctx.Request.Body(), noRelease, nil
	}
	defer ctx.Request.CloseBodyStream()
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		return nil, noRelease, endEarly(ctx, tooLargeError(limit))
	}
	s := bodyStates.Get().(*bodyState)
	c, _ := ctx.Conn().(*conn)
	if c != nil {
		s.budget = c.set.bodies
		defer c.endBodyReads()
	}
	fail := func(e *Error) ([]byte, func(), error) {
		s.free()
		return nil, noRelease, endEarly(ctx, e)
	}
	// end is the most the body may reserve; size is what it has read: the
	// full chunks, then b, the buffer being filled (s.bp).
	end, size := n, 0
	if n < 0 { // chunked
		end = limit + 1
	}
	var b []byte
	r := ctx.RequestBodyStream()
	for n < 0 || size < n {
		if size == s.held { // reserve the next step
			if s.held == end { // chunked, one byte over the limit
				return fail(tooLargeError(limit))
			}
			step, total := nextStep(s.held, end), n
			if n < 0 {
				total = s.held + step
			}
			wait := budgetWait
			if s.held == 0 {
				wait = 0 // a body not started is refused at once
			}
			// Half a declared body is in: the rest goes into one buffer.
			half := n > 0 && s.held >= bodyChunk && 2*size >= n
			if half {
				step = n - s.held
			}
			// A declared body of up to a chunk that has mostly arrived
			// already (in the socket's receive queue: at least half of it,
			// so the rule of at most twice what was sent holds) is read
			// into one buffer of its length: no buffer grown by copies
			// (16 → 32 → 64 KiB cost a 64 KiB hash ~3 µs, 6 %).
			if s.held == 0 && n > minBodyBuf && n <= bodyChunk && c != nil && 2*c.arrived() >= n {
				step = n
			}
			if !s.budget.take(step, total, wait) {
				budget := s.budget
				s.free()
				return nil, noRelease, overBudget(ctx, budget)
			}
			s.held += step
			if half {
				b = s.whole(b, size, n)
			}
		}
		if len(b) == cap(b) {
			if cap(b) < bodyChunk { // the first buffer grows
				nbp := getBuf(min(s.held, bodyChunk))
				nb := append((*nbp)[:0], b...)
				putBuf(s.bp)
				s.bp, b = nbp, nb
			} else { // a chunk is full: the next
				s.chunks = append(s.chunks, s.bp)
				s.bp = getBuf(bodyChunk)
				b = (*s.bp)[:0]
			}
		}
		var m int
		var err error
		idle := false
		p := b[len(b):min(cap(b), len(b)+s.held-size)]
		if c != nil {
			m, idle, err = c.readBody(r, p)
		} else {
			m, err = r.Read(p)
		}
		b = b[:len(b)+m]
		size += m
		if err == io.EOF {
			break
		}
		if err != nil {
			var nerr net.Error
			switch {
			case idle:
				return fail(Errorf(fasthttp.StatusRequestTimeout, CodeRequestTimeout,
					"request body: nothing received for %v", c.set.bodyIdle))
			case errors.As(err, &nerr) && nerr.Timeout():
				return fail(Errorf(fasthttp.StatusRequestTimeout, CodeRequestTimeout,
					"request body not received within the read timeout"))
			}
			return fail(Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "malformed request body"))
		}
	}
	switch {
	case size > limit:
		return fail(tooLargeError(limit))
	case n >= 0 && size != n:
		return fail(Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "request body shorter than its Content-Length"))
	}
	if len(s.chunks) > 0 { // a chunked body past its first buffer
		b = s.whole(b, size, size)
		s.budget.give(s.held - size)
		s.held = size
	}
	return b, s.release, nil
}

func tooLargeError(limit int) *Error {
	return Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
		"request body exceeds the limit of %d bytes", limit)
}

// overBudget is the 503 of a body that does not fit the worker's budget.
// The budget frees as the bodies in flight are served, within about a
// task's time: Retry-After is a second.
func overBudget(ctx *fasthttp.RequestCtx, b *bodyBudget) *Error {
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
	return endEarly(ctx, Errorf(fasthttp.StatusServiceUnavailable, CodeOverloaded,
		"request bodies in flight are at this worker's limit of %d bytes; retry", b.limit))
}

// EndEarly marks the request's connection to close after this response, by
// lingering (conn.go): the handler answers before the body is read (a
// refusal from the headers), and the client may still be sending it.
func EndEarly(ctx *fasthttp.RequestCtx) {
	ctx.SetConnectionClose()
	if c, ok := ctx.Conn().(*conn); ok {
		c.lingerOnClose()
	}
}

func endEarly(ctx *fasthttp.RequestCtx, e *Error) *Error {
	EndEarly(ctx)
	return e
}

// bodyLeftUnread reports whether the request has a body that its handler
// did not read: then the connection cannot carry another request.
func bodyLeftUnread(ctx *fasthttp.RequestCtx) bool {
	return ctx.Request.IsBodyStream() && ctx.Request.Header.ContentLength() != 0
}
