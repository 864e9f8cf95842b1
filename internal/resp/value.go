package resp

import (
	"errors"
	"fmt"
	"strings"
)

// The errors of the package; each is wrapped with what failed.
var (
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("resp: client closed")
	// ErrProtocol: the server sent something that is not a RESP2 reply
	// within the bounds (see the package doc). The connection is closed.
	ErrProtocol = errors.New("resp: protocol error")
	// ErrTooLarge: a bulk string over Options.MaxReply, or an array over
	// Options.MaxArray. The connection is closed, unread.
	ErrTooLarge = errors.New("resp: reply over the client's bounds")
	// ErrType: a Value is not of the kind a helper reads.
	ErrType = errors.New("resp: unexpected reply type")
)

// Error is an error reply of the server (-ERR …, -NOSCRIPT …, -WRONGPASS
// …): the command was refused or failed, and the connection is fine.
type Error struct {
	Msg string // the line after '-', such as "ERR unknown command 'X'"
}

func (e *Error) Error() string { return "redis: " + e.Msg }

// Code is the message's first word ("ERR", "NOSCRIPT", "WRONGPASS").
func (e *Error) Code() string {
	code, _, _ := strings.Cut(e.Msg, " ")
	return code
}

// Value is one RESP2 reply.
type Value struct {
	// Kind is the reply's type byte: '+' a simple string, '-' an error
	// (only inside an array: Do returns a top-level one as *Error), ':'
	// an integer, '$' a bulk string, '*' an array.
	Kind byte
	// Str is a simple or bulk string, or an error's message.
	Str []byte
	// Int is an integer.
	Int int64
	// Array is an array's elements.
	Array []Value
	// Null marks a null bulk string ($-1) or array (*-1).
	Null bool
}

// Bytes returns a bulk or simple string; nil for a null bulk string.
func (v Value) Bytes() ([]byte, error) {
	if v.Kind != '$' && v.Kind != '+' {
		return nil, v.typeErr("a string")
	}
	return v.Str, nil
}

// Int64 returns an integer.
func (v Value) Int64() (int64, error) {
	if v.Kind != ':' {
		return 0, v.typeErr("an integer")
	}
	return v.Int, nil
}

// Int64s returns an array of integers (a Lua script's table of numbers).
func (v Value) Int64s() ([]int64, error) {
	if v.Kind != '*' || v.Null {
		return nil, v.typeErr("an array of integers")
	}
	out := make([]int64, len(v.Array))
	for i, e := range v.Array {
		if e.Kind != ':' {
			return nil, fmt.Errorf("%w: element %d: %s, want an integer", ErrType, i, e.kind())
		}
		out[i] = e.Int
	}
	return out, nil
}

func (v Value) typeErr(want string) error {
	return fmt.Errorf("%w: %s, want %s", ErrType, v.kind(), want)
}

func (v Value) kind() string {
	switch {
	case v.Kind == '$' && v.Null:
		return "a null bulk string"
	case v.Kind == '*' && v.Null:
		return "a null array"
	case v.Kind == '+':
		return "a simple string"
	case v.Kind == '-':
		return "an error"
	case v.Kind == ':':
		return "an integer"
	case v.Kind == '$':
		return "a bulk string"
	case v.Kind == '*':
		return "an array"
	}
	return fmt.Sprintf("kind %q", v.Kind)
}
