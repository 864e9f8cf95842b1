// Package jsonw appends JSON objects field by field, without reflection and
// without allocating beyond the buffer it appends to. It exists for the
// documents served on every request of a health check (GET /health), where
// encoding/json's reflection was 70 % of the handler's time. Documents with
// a shape that matters to clients keep their struct with json tags, and a
// test holds the appended form equal to encoding/json's.
package jsonw

import (
	"strconv"
	"unicode/utf8"
)

// Object is a JSON object being appended to B. Open it, add fields, Close it.
type Object struct {
	B []byte
	n int
}

// Open starts an object at the end of b.
func Open(b []byte) Object { return Object{B: append(b, '{')} }

// Close ends the object and returns the buffer.
func (o *Object) Close() []byte { return append(o.B, '}') }

func (o *Object) key(k string) {
	if o.n > 0 {
		o.B = append(o.B, ',')
	}
	o.n++
	o.B = AppendString(o.B, k)
	o.B = append(o.B, ':')
}

// Int adds "k":v.
func (o *Object) Int(k string, v int64) { o.key(k); o.B = strconv.AppendInt(o.B, v, 10) }

// Uint adds "k":v.
func (o *Object) Uint(k string, v uint64) { o.key(k); o.B = strconv.AppendUint(o.B, v, 10) }

// Float adds "k":v as encoding/json writes it for |v| in [1e-6, 1e21) and 0.
func (o *Object) Float(k string, v float64) {
	o.key(k)
	o.B = strconv.AppendFloat(o.B, v, 'f', -1, 64)
}

// Bool adds "k":v.
func (o *Object) Bool(k string, v bool) { o.key(k); o.B = strconv.AppendBool(o.B, v) }

// String adds "k":"v", escaped.
func (o *Object) String(k, v string) { o.key(k); o.B = AppendString(o.B, v) }

// Key adds "k": and leaves the value to the caller, who appends it to o.B
// (a nested object or array).
func (o *Object) Key(k string) { o.key(k) }

// AppendString appends s as a JSON string, escaped as encoding/json
// escapes it: quotes, backslashes and control characters; <, > and & as
// \u003c, \u003e, \u0026; U+2028 and U+2029; invalid UTF-8 as U+FFFD.
func AppendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(append(b, s[start:i]...), `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(append(b, s[start:i]...), '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
