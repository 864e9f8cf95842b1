package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// Error is an error with its HTTP meaning: the status, a stable code and a
// message safe to show the client. Internal details belong in the log, not
// in Message.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message) }

// Errorf returns an *Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Stable error codes, each with its status.
const (
	CodeBadRequest      = "bad_request"          // 400
	CodeBadParam        = "bad_param"            // 400
	CodeNotFound        = "not_found"            // 404
	CodeMethodNotAllow  = "method_not_allowed"   // 405
	CodeRequestTimeout  = "request_timeout"      // 408
	CodeBodyTooLarge    = "body_too_large"       // 413
	CodeHeadersTooLarge = "headers_too_large"    // 431
	CodeInternal        = "internal"             // 500
	CodeNotImplemented  = "not_implemented"      // 501
	CodeDraining        = "draining"             // 503
	CodeOverloaded      = "overloaded"           // 503
	CodeTooManyConns    = "too_many_connections" // 503, 429 per client address
)

// MaxMessage bounds an error's message as [WriteError] sends it: a longer
// one is cut, on a rune boundary, and ends in "…". It is a safety net, so
// that no caller, whatever it names in a message, can make an error body
// large or echo a request back at length; name a client's value with
// [Quote].
const MaxMessage = 256

// maxQuoted bounds what [Quote] keeps of a value, before quoting.
const maxQuoted = 40

// Quote returns s as a Go-quoted string (%q), cut to its first 40 bytes
// (on a rune boundary, with "…" inside the quotes) when longer: the way to
// name a client's value in an error message. Quoting escapes control
// bytes and invalid UTF-8, so a value cannot forge log lines or break the
// JSON it is embedded in, and the cut keeps the message short.
func Quote(s string) string {
	return strconv.Quote(truncate(s, maxQuoted))
}

// truncate shortens s to at most n bytes plus the "…" that marks the cut,
// on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// WriteError writes err as the project's JSON error. An error that is not an
// *Error becomes a 500 whose message does not leak the cause. A message
// longer than [MaxMessage] bytes is cut.
func WriteError(ctx *fasthttp.RequestCtx, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: fasthttp.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
	}
	var body errorBody
	body.Error.Code, body.Error.Message = e.Code, truncate(e.Message, MaxMessage)
	WriteJSON(ctx, e.Status, body)
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = fasthttp.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode response"}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// transportErrors returns fasthttp's ErrorHandler: it maps the errors met while
// reading a request, before any handler runs, onto the error shape. Each
// message is fixed: fasthttp's own errors quote the request's bytes (a bad
// request line, a header's value), which must not be echoed to the client,
// whatever it sent.
func transportErrors(maxBody int) func(*fasthttp.RequestCtx, error) {
	return func(ctx *fasthttp.RequestCtx, err error) {
		e := transportError(err, maxBody)
		if errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding) && ctx.Request.Header.IsHTTP11() {
			// A transfer coding fasthttp does not know (RFC 9112 section
			// 6.1: 501), as framingError answers "identity".
			e = notImplementedTE
		}
		WriteError(ctx, e)
	}
}

// notImplementedTE answers a Transfer-Encoding other than chunked.
var notImplementedTE = &Error{Status: fasthttp.StatusNotImplemented, Code: CodeNotImplemented,
	Message: "Transfer-Encoding other than chunked is not implemented"}

// transportError is the *Error answering err, an error fasthttp met while
// reading a request.
func transportError(err error, maxBody int) *Error {
	var small *fasthttp.ErrSmallBuffer
	var nerr net.Error
	bad := func(msg string) *Error {
		return &Error{Status: fasthttp.StatusBadRequest, Code: CodeBadRequest, Message: msg}
	}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
			"request body exceeds the limit of %d bytes", maxBody)
	case errors.As(err, &small):
		return Errorf(fasthttp.StatusRequestHeaderFieldsTooLarge, CodeHeadersTooLarge, "request headers too large")
	case errors.As(err, &nerr) && nerr.Timeout():
		return Errorf(fasthttp.StatusRequestTimeout, CodeRequestTimeout, "request not received within the read timeout")
	case errors.Is(err, fasthttp.ErrDuplicateContentLength):
		return bad("malformed request: more than one Content-Length")
	case errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding):
		// Also an HTTP/1.0 request with Transfer-Encoding (RFC 9112
		// section 6.1: faulty framing).
		return bad("malformed request: unsupported Transfer-Encoding")
	case errors.Is(err, fasthttp.ErrNonNumericChars):
		return bad("malformed request: Content-Length is not a number")
	}
	return bad("malformed request")
}
