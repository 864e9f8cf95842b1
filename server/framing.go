package server

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// What a request must look like before it is routed. Each check answers a
// way of making two parsers disagree about a request: a proxy in front and
// this server, or the router and a handler.
//
//   - Framing (RFC 9112 section 6.3): a request with both Content-Length
//     and Transfer-Encoding is refused with 400, and its connection closed
//     after the answer. fasthttp 1.74 frames it by Transfer-Encoding, drops
//     the Content-Length and keeps the connection, so a proxy that framed
//     it by Content-Length would see a different next request on the same
//     connection (request smuggling). The RFC allows refusing or
//     processing by Transfer-Encoding, and requires the close either way;
//     refusing makes the disagreement visible instead of serving a request
//     the proxy may not have meant.
//   - Path (RFC 3986 section 6.2.2): fasthttp decodes the path, then
//     resolves dot segments, so /v1/hash/sha256%2F..%2F..%2Fhealth would be
//     routed as /health, past whatever a proxy allows by path prefix. A
//     path is refused with 400 if, as sent, it holds an encoded '/' or '\',
//     a raw '\', or a '.' or '..' segment (raw or encoded): the routes are
//     plain names, and a client that sends such a path is either broken
//     or probing. Duplicate slashes, which fasthttp merges, are left alone:
//     they cannot climb out of a prefix.
//   - Query: a key given twice is refused with 400 bad_param, as is a
//     query of more than [maxQueryArgs] parameters. Handlers read the
//     first value of a key; a proxy or a logging layer may read the last,
//     so a repeated key could check one value and run another.

// maxQueryArgs bounds the parameters of one request: a route takes a
// handful, and the duplicate check is quadratic in their number.
const maxQueryArgs = 64

// bothLengths reports whether the request came with both Content-Length
// and Transfer-Encoding. fasthttp keeps Transfer-Encoding (the length is
// then -1, chunked) and forgets the Content-Length, so it is looked for in
// the raw header block; only chunked requests pay for the scan.
func bothLengths(h *fasthttp.RequestHeader) bool {
	if h.ContentLength() != -1 {
		return false
	}
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i+1], raw[i+1:]
		} else {
			raw = nil
		}
		const cl = "content-length:"
		if len(line) >= len(cl) && bytes.EqualFold(line[:len(cl)], []byte(cl)) {
			return true
		}
	}
	return false
}

// refuseFraming answers a request that frames its body two ways with 400,
// and closes its connection after the answer; it reports whether it did.
func refuseFraming(ctx *fasthttp.RequestCtx) bool {
	if !bothLengths(&ctx.Request.Header) {
		return false
	}
	// The body may still be on its way: close by lingering.
	WriteError(ctx, endEarly(ctx, &Error{Status: fasthttp.StatusBadRequest, Code: CodeBadRequest,
		Message: "malformed request: both Content-Length and Transfer-Encoding"}))
	return true
}

// checkTarget returns the error for a request target the router refuses
// (see the notes above), or nil.
func checkTarget(ctx *fasthttp.RequestCtx) *Error {
	if unsafePath(ctx.URI().PathOriginal()) {
		return &Error{Status: fasthttp.StatusBadRequest, Code: CodeBadRequest,
			Message: `malformed request path: an encoded "/" or "\", or a "." or ".." segment`}
	}
	args := ctx.QueryArgs()
	if args.Len() > maxQueryArgs {
		return Errorf(fasthttp.StatusBadRequest, CodeBadParam, "more than %d query parameters", maxQueryArgs)
	}
	i := 0
	for k := range args.All() {
		j := 0
		for prev := range args.All() {
			if j == i {
				break
			}
			if bytes.Equal(prev, k) {
				return Errorf(fasthttp.StatusBadRequest, CodeBadParam,
					"query parameter %s given more than once", Quote(string(k)))
			}
			j++
		}
		i++
	}
	return nil
}

// unsafePath reports whether a request path, as the client sent it, holds
// an encoded '/' or '\' (%2F, %5C), a raw '\', or a dot segment: "." or
// "..", each dot raw or encoded (%2E).
func unsafePath(p []byte) bool {
	for i, c := range p {
		switch {
		case c == '\\':
			return true
		case c == '%' && i+2 < len(p):
			if (p[i+1] == '2' && p[i+2]|0x20 == 'f') || (p[i+1] == '5' && p[i+2]|0x20 == 'c') {
				return true
			}
		}
	}
	for len(p) > 0 {
		seg := p
		if i := bytes.IndexByte(p, '/'); i >= 0 {
			seg, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		if dotSegment(seg) {
			return true
		}
	}
	return false
}

// dotSegment reports whether a path segment decodes to "." or "..".
func dotSegment(s []byte) bool {
	dots := 0
	for len(s) > 0 {
		switch {
		case s[0] == '.':
			s = s[1:]
		case len(s) >= 3 && s[0] == '%' && s[1] == '2' && s[2]|0x20 == 'e':
			s = s[3:]
		default:
			return false
		}
		dots++
	}
	return dots == 1 || dots == 2
}
