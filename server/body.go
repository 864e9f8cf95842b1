package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"

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

var bodyBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest body buffer kept for reuse: a pool of
// buffers as large as the body limit would hold that much per worker after
// one burst of large uploads.
const maxPooledBody = 4 << 20

// Body returns the request's body, at most limit bytes, and release, which
// the caller calls once it no longer uses the body (the buffer is reused).
// A body over limit is a 413 body_too_large, a malformed chunked body a 400
// bad_request, a body not received within the read timeout a 408; each
// *Error also closes the connection by lingering, since the rest of the body
// may still be on its way.
func Body(ctx *fasthttp.RequestCtx, limit int) (body []byte, release func(), err error) {
	if !ctx.Request.IsBodyStream() { // not a streaming server (a test's RequestCtx)
		return ctx.Request.Body(), func() {}, nil
	}
	defer ctx.Request.CloseBodyStream()
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		return nil, func() {}, endEarly(ctx, Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
			"request body exceeds the limit of %d bytes", limit))
	}
	buf := bodyBufs.Get().(*bytes.Buffer)
	buf.Reset()
	release = func() {
		if buf.Cap() <= maxPooledBody {
			bodyBufs.Put(buf)
		}
	}
	if n > 0 {
		buf.Grow(n)
	}
	// One byte more than the limit tells a chunked body over it.
	got, err := buf.ReadFrom(io.LimitReader(ctx.RequestBodyStream(), int64(limit)+1))
	switch {
	case err != nil:
		release()
		var nerr net.Error
		if errors.As(err, &nerr) && nerr.Timeout() {
			return nil, func() {}, endEarly(ctx, Errorf(fasthttp.StatusRequestTimeout, CodeRequestTimeout,
				"request body not received within the read timeout"))
		}
		return nil, func() {}, endEarly(ctx, Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "malformed request body"))
	case got > int64(limit):
		release()
		return nil, func() {}, endEarly(ctx, Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
			"request body exceeds the limit of %d bytes", limit))
	case n >= 0 && got != int64(n):
		release()
		return nil, func() {}, endEarly(ctx, Errorf(fasthttp.StatusBadRequest, CodeBadRequest,
			"request body shorter than its Content-Length"))
	}
	return buf.Bytes(), release, nil
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
