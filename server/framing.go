package server

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// What a request must look like before it is routed. Each check answers a
// way of making two parsers disagree about a request: a proxy in front and
// this server, or the router and a handler.
//
//   - Framing (RFC 9112 sections 5.2, 6.1, 6.3): a request with both
//     Content-Length and Transfer-Encoding is refused with 400, one with a
//     Transfer-Encoding other than exactly "chunked" with 501
//     not_implemented, and one with a folded header line (a line that
//     starts with a space or a tab, which fasthttp joins to the line
//     before and a proxy may read as a header of its own) with 400; each
//     connection is closed after the answer. fasthttp 1.74 frames it by Transfer-Encoding, drops
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

// framingError returns the error for a request whose header block frames
// its body in a way this server refuses (see the notes above), or nil. It
// looks at the raw header block, on every request, since fasthttp forgets
// what it does not use: a Content-Length beside a chunked
// Transfer-Encoding, and any Transfer-Encoding that is not chunked
// (fasthttp 1.74 accepts "identity", reads the body as empty and parses
// what follows as the next request). The scan is a byte search per line
// and allocates nothing.
func framingError(h *fasthttp.RequestHeader) *Error {
	raw := h.RawHeaders()
	var cl, te, chunked bool
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return &Error{Status: fasthttp.StatusBadRequest, Code: CodeBadRequest,
				Message: "malformed request: obsolete line folding in a header"}
		}
		switch line[0] | 0x20 {
		case 'c':
			cl = cl || hasPrefixFold(line, "content-length:")
		case 't':
			if v, ok := cutPrefixFold(line, "transfer-encoding:"); ok {
				te = true
				chunked = bytes.EqualFold(bytes.Trim(v, " \t\r"), []byte("chunked"))
			}
		}
	}
	switch {
	case te && cl:
		return &Error{Status: fasthttp.StatusBadRequest, Code: CodeBadRequest,
			Message: "malformed request: both Content-Length and Transfer-Encoding"}
	case te && !chunked:
		return notImplementedTE
	}
	return nil
}

// hasPrefixFold reports whether line begins with prefix, a lower-case
// ASCII string, in any case.
func hasPrefixFold(line []byte, prefix string) bool {
	_, ok := cutPrefixFold(line, prefix)
	return ok
}

// cutPrefixFold returns line after prefix, a lower-case ASCII string
// matched in any case, and whether line began with it.
func cutPrefixFold(line []byte, prefix string) ([]byte, bool) {
	if len(line) < len(prefix) {
		return nil, false
	}
	for i := range len(prefix) {
		c := line[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return nil, false
		}
	}
	return line[len(prefix):], true
}

// refuseFraming answers a request whose framing framingError refuses,
// and closes its connection after the answer (by lingering: its body may
// still be on its way); it reports whether it did.
func refuseFraming(ctx *fasthttp.RequestCtx) bool {
	e := framingError(&ctx.Request.Header)
	if e == nil {
		return false
	}
	WriteError(ctx, endEarly(ctx, e))
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
