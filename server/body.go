package server

import (
	"errors"
	"io"
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
// A body reserves as it arrives, never ahead of it: its buffer starts at
// [minBodyBuf] (or its declared length, if smaller) and doubles each time
// it fills, up to the declared length (or one byte over the limit, for a
// chunked body, which tells a body over it). A body therefore holds at
// most twice what its client has sent, plus the first step, whatever
// length it declared: a client that declares 32 MiB and stalls holds
// 16 KiB, not 32 MiB. (Reserving the declared length up front, as this
// did before, let ~260 stalled connections that had sent 15 MB in all
// hold a worker's whole 128 MiB, and every body after them got 503.) The
// reservation is the buffer's capacity, since that is what the heap
// holds, not the bytes in it.
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

var bodyBufs = sync.Pool{New: func() any { return new([]byte) }}

const (
	// maxPooledBody is the largest body buffer kept for reuse: a pool of
	// buffers as large as the body limit would hold that much per worker
	// after one burst of large uploads.
	maxPooledBody = 4 << 20
	// minBodyBuf is a body's first step: what a body reserves, and
	// its buffer holds, before the first byte past fasthttp's 8 KiB
	// arrives. With --max-conns 4096, all of them stalled at once hold
	// 64 MiB of the budget.
	minBodyBuf = 16 << 10
)

// nextStep is what a body that has reserved held bytes reserves next:
// as much again (at least minBodyBuf), up to end, its declared length or
// one byte over the limit.
func nextStep(held, end int) int {
	return min(max(held, minBodyBuf), end-held)
}

// Body returns the request's body, at most limit bytes, and release, which
// the caller calls once it no longer uses the body (the buffer is reused
// and its bytes return to the worker's budget). A body over limit is a 413
// body_too_large, one that does not fit the worker's budget of bodies in
// flight a 503 overloaded (with Retry-After), a malformed chunked body a
// 400 bad_request, a body not received within the read timeout, or that
// sends nothing for Config.BodyIdleTimeout, a 408; each *Error also closes
// the connection by lingering, since the rest of the body may still be on
// its way.
func Body(ctx *fasthttp.RequestCtx, limit int) (body []byte, release func(), err error) {
	if !ctx.Request.IsBodyStream() { // not a streaming server (a test's RequestCtx)
		return ctx.Request.Body(), func() {}, nil
	}
	defer ctx.Request.CloseBodyStream()
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		return nil, func() {}, endEarly(ctx, tooLargeError(limit))
	}
	var budget *bodyBudget
	c, _ := ctx.Conn().(*conn)
	if c != nil {
		budget = c.set.bodies
		defer c.endBodyReads()
	}
	// held is what the body has reserved, and the most its buffer holds;
	// end is the most it may reserve.
	held, end := 0, n
	if n < 0 { // chunked
		end = limit + 1
	}
	bp := bodyBufs.Get().(*[]byte)
	b := (*bp)[:0]
	release = func() {
		budget.give(held)
		if cap(b) <= maxPooledBody {
			*bp = b[:0]
			bodyBufs.Put(bp)
		}
	}
	fail := func(e *Error) ([]byte, func(), error) {
		release()
		return nil, func() {}, endEarly(ctx, e)
	}
	r := ctx.RequestBodyStream()
	for n < 0 || len(b) < n {
		if len(b) == held { // reserve the next step
			if held == end { // chunked, one byte over the limit
				return fail(tooLargeError(limit))
			}
			step, total := nextStep(held, end), n
			wait := budgetWait
			if n < 0 {
				total = held + step
			}
			if held == 0 {
				wait = 0 // a body not started is refused at once
			}
			if !budget.take(step, total, wait) {
				release()
				return nil, func() {}, overBudget(ctx, budget)
			}
			held += step
		}
		if len(b) == cap(b) {
			nb := make([]byte, len(b), held)
			copy(nb, b)
			if cap(b) > 0 && cap(b) <= maxPooledBody {
				*bp = b[:0]
				bodyBufs.Put(bp)
				bp = new([]byte)
			}
			b = nb
		}
		var m int
		var err error
		idle := false
		if c != nil {
			m, idle, err = c.readBody(r, b[len(b):min(cap(b), held)])
		} else {
			m, err = r.Read(b[len(b):min(cap(b), held)])
		}
		b = b[:len(b)+m]
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
	case len(b) > limit:
		return fail(tooLargeError(limit))
	case n >= 0 && len(b) != n:
		return fail(Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "request body shorter than its Content-Length"))
	}
	return b, release, nil
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
