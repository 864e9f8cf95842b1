package server

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

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
// (Config.MaxInflightBody), which Body reserves from before it reads, so
// that however many clients upload at once the bodies held stay within it,
// and a body beyond it gets 503 overloaded at once; and by reading
// progressively: a body's buffer doubles from 64 KiB as bytes arrive, and
// only past 1 MiB is it made as large as the body's reservation (whose
// pages cost memory only as they are written), so that a client that
// stalls holds about what it sent. (fasthttp itself reads the first 8 KiB
// of a body before any handler runs.)
//
// A body with a Content-Length reserves that length whole, up front: a
// body admitted is never refused half-way, after its client uploaded most
// of it. The price is that a client that declares a large body and stalls
// holds budget it has not sent, until the read timeout ends it. Small
// bodies therefore have a lane of their own: a body over [smallBody] may
// use only 7/8 of the budget, so that large uploads, stalled or not, never
// refuse the small requests most clients make (the last eighth, 16 MiB by
// default, is 256 small bodies at once). A chunked body, whose length is
// unknown, reserves as it grows, in doubling steps, and can be refused
// part-way.

// bodyBudget is a worker's budget of request-body bytes in flight: those
// reserved by the bodies being read or held by their handlers.
type bodyBudget struct {
	limit   int64
	used    atomic.Int64
	refused atomic.Uint64
}

// smallBody is the largest body that may use the whole budget; larger
// ones may use 7/8 of it.
const smallBody = 64 << 10

// take reserves n bytes of a body that will then have reserved total bytes,
// and reports whether they fit. A nil budget has room for everything.
func (b *bodyBudget) take(n, total int) bool {
	if b == nil || n <= 0 {
		return true
	}
	limit := b.limit
	if total > smallBody {
		limit -= b.limit / 8
	}
	for {
		used := b.used.Load()
		if used+int64(n) > limit {
			b.refused.Add(1)
			return false
		}
		if b.used.CompareAndSwap(used, used+int64(n)) {
			return true
		}
	}
}

// give returns n reserved bytes.
func (b *bodyBudget) give(n int) {
	if b != nil && n > 0 {
		b.used.Add(-int64(n))
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
	// minBodyBuf is the first buffer of a body that needs a new one; it
	// doubles as the body arrives, up to maxBodyStep.
	minBodyBuf = 64 << 10
	// maxBodyStep is the last doubling: a body that has sent this much
	// gets a buffer of all it has reserved. Doubling all the way would
	// leave a body's own length in discarded buffers, which the heap keeps
	// resident until the GC and the scavenger return it: with four 31 MiB
	// uploads held it took a worker's peak from 137 to 220 MiB. A fresh
	// large buffer costs memory only as its pages are written.
	maxBodyStep = 1 << 20
)

// nextBodyCap is the capacity of a body buffer that is full at capacity c,
// with held bytes reserved.
func nextBodyCap(c, held int) int {
	next := max(2*c, minBodyBuf)
	if next > maxBodyStep {
		next = held
	}
	return min(next, held)
}

// Body returns the request's body, at most limit bytes, and release, which
// the caller calls once it no longer uses the body (the buffer is reused
// and its bytes return to the worker's budget). A body over limit is a 413
// body_too_large, one that does not fit the worker's budget of bodies in
// flight a 503 overloaded (with Retry-After), a malformed chunked body a
// 400 bad_request, a body not received within the read timeout a 408; each
// *Error also closes the connection by lingering, since the rest of the
// body may still be on its way.
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
	if c, ok := ctx.Conn().(*conn); ok {
		budget = c.set.bodies
	}
	// held is what the body has reserved: its length if declared; if
	// chunked, what it has grown to, up to one byte over the limit (which
	// tells a body over it).
	held := 0
	if n > 0 {
		if !budget.take(n, n) {
			return nil, func() {}, overBudget(ctx, budget)
		}
		held = n
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
	for n == -1 || len(b) < n { // -1: chunked
		if len(b) == held { // chunked: reserve the next step
			if held > limit {
				return fail(tooLargeError(limit))
			}
			step := min(max(held, minBodyBuf), limit+1-held)
			if !budget.take(step, held+step) {
				release()
				return nil, func() {}, overBudget(ctx, budget)
			}
			held += step
		}
		if len(b) == cap(b) {
			nb := make([]byte, len(b), nextBodyCap(cap(b), held))
			copy(nb, b)
			b = nb
		}
		m, err := r.Read(b[len(b):min(cap(b), held)])
		b = b[:len(b)+m]
		if err == io.EOF {
			break
		}
		if err != nil {
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() {
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
