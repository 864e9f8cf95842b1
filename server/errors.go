package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

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
	CodeBadRequest      = "bad_request"        // 400
	CodeNotFound        = "not_found"          // 404
	CodeMethodNotAllow  = "method_not_allowed" // 405
	CodeRequestTimeout  = "request_timeout"    // 408
	CodeBodyTooLarge    = "body_too_large"     // 413
	CodeHeadersTooLarge = "headers_too_large"  // 431
	CodeInternal        = "internal"           // 500
	CodeDraining        = "draining"           // 503
)

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// WriteError writes err as the project's JSON error. An error that is not an
// *Error becomes a 500 whose message does not leak the cause.
func WriteError(ctx *fasthttp.RequestCtx, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: fasthttp.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
	}
	var body errorBody
	body.Error.Code, body.Error.Message = e.Code, e.Message
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
// reading a request, before any handler runs, onto the error shape.
func transportErrors(maxBody int) func(*fasthttp.RequestCtx, error) {
	return func(ctx *fasthttp.RequestCtx, err error) {
		var small *fasthttp.ErrSmallBuffer
		var nerr net.Error
		switch {
		case errors.Is(err, fasthttp.ErrBodyTooLarge):
			WriteError(ctx, Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				"request body exceeds the limit of %d bytes", maxBody))
		case errors.As(err, &small):
			WriteError(ctx, Errorf(fasthttp.StatusRequestHeaderFieldsTooLarge, CodeHeadersTooLarge, "request headers too large"))
		case errors.As(err, &nerr) && nerr.Timeout():
			WriteError(ctx, Errorf(fasthttp.StatusRequestTimeout, CodeRequestTimeout, "request not received within the read timeout"))
		default:
			WriteError(ctx, Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "malformed request: %v", err))
		}
	}
}
