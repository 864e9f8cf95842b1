package resp

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Bounds of a reply beyond those of Options.
const (
	maxLine  = 64 << 10 // a simple string, an error, a length or an integer
	maxDepth = 4        // arrays within arrays
)

// reader parses replies from r within its bounds.
type reader struct {
	r        *bufio.Reader
	maxBulk  int
	maxArray int
	budget   int // bulk bytes left to the reply being read
}

// read parses one reply.
func (rd *reader) read() (Value, error) {
	rd.budget = rd.maxBulk
	return rd.value(0)
}

// value parses one value within depth arrays.
func (rd *reader) value(depth int) (Value, error) {
	line, err := rd.line()
	if err != nil {
		if depth > 0 {
			err = unexpected(err)
		}
		return Value{}, err
	}
	v := Value{Kind: line[0]}
	body := line[1:]
	switch v.Kind {
	case '+', '-':
		v.Str = slices.Clone(body)
		if v.Str == nil {
			v.Str = []byte{}
		}
		return v, nil
	case ':':
		v.Int, err = parseInt(body)
		return v, err
	case '$':
		n, err := length(body, "a bulk string")
		if err != nil {
			return Value{}, err
		}
		if n < 0 {
			v.Null = true
			return v, nil
		}
		if n > int64(rd.budget) {
			return Value{}, fmt.Errorf("%w: a bulk string of %d bytes, over MaxReply (%d, %d left to this reply)",
				ErrTooLarge, n, rd.maxBulk, rd.budget)
		}
		rd.budget -= int(n)
		if v.Str, err = readBulk(rd.r, int(n)); err != nil {
			return Value{}, err
		}
		return v, nil
	case '*':
		n, err := length(body, "an array")
		if err != nil {
			return Value{}, err
		}
		if n < 0 {
			v.Null = true
			return v, nil
		}
		if n > int64(rd.maxArray) {
			return Value{}, fmt.Errorf("%w: an array of %d elements, over MaxArray (%d)", ErrTooLarge, n, rd.maxArray)
		}
		if depth == maxDepth {
			return Value{}, fmt.Errorf("%w: arrays nested over %d deep", ErrProtocol, maxDepth)
		}
		// Grown as elements arrive, not from the announced length.
		v.Array = make([]Value, 0, min(int(n), 16))
		for range n {
			e, err := rd.value(depth + 1)
			if err != nil {
				return Value{}, err
			}
			v.Array = append(v.Array, e)
		}
		return v, nil
	}
	return Value{}, fmt.Errorf("%w: type byte %q", ErrProtocol, v.Kind)
}

// line reads a line of at most maxLine bytes (its type byte included, its
// CRLF not) and returns it without its CRLF, at least one byte long. The
// slice is valid until the next read.
func (rd *reader) line() ([]byte, error) {
	b, err := rd.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// Longer than the buffer: gather it, still bounded.
		long := slices.Clone(b)
		for err == bufio.ErrBufferFull && len(long) <= maxLine+2 {
			b, err = rd.r.ReadSlice('\n')
			long = append(long, b...)
		}
		b = long
	}
	if len(b) > maxLine+2 {
		return nil, fmt.Errorf("%w: a line over %d bytes", ErrProtocol, maxLine)
	}
	if err != nil {
		if len(b) > 0 {
			err = unexpected(err)
		}
		return nil, err
	}
	if len(b) < 3 || b[len(b)-2] != '\r' {
		return nil, fmt.Errorf("%w: a line not ended by CRLF, or empty", ErrProtocol)
	}
	return b[:len(b)-2], nil
}

// length parses an announced length: -1 (null) or from 0.
func length(b []byte, what string) (int64, error) {
	n, err := parseInt(b)
	if err == nil && n < -1 {
		err = fmt.Errorf("%w: %s of length %d", ErrProtocol, what, n)
	}
	return n, err
}

// parseInt parses a decimal integer, strictly: an optional '-', then 1 to
// 19 digits, within int64.
func parseInt(b []byte) (int64, error) {
	digits := b
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 19 {
		return 0, fmt.Errorf("%w: %q is no integer", ErrProtocol, trunc(b))
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: %q is no integer", ErrProtocol, trunc(b))
		}
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is no int64", ErrProtocol, trunc(b))
	}
	return n, nil
}

func trunc(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// readBulk reads n bytes and their CRLF. Memory grows, by doubling, with
// the bytes that arrive: a server that announces a large string and
// sends little costs little.
func readBulk(r *bufio.Reader, n int) ([]byte, error) {
	const first = 64 << 10
	var b []byte
	if n <= first {
		b = make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, unexpected(err)
		}
	} else {
		b = make([]byte, 0, first)
		for len(b) < n {
			if len(b) == cap(b) {
				b = slices.Grow(b, min(len(b), n-len(b)))
			}
			m, err := io.ReadFull(r, b[len(b):min(cap(b), n)])
			b = b[:len(b)+m]
			if err != nil {
				return nil, unexpected(err)
			}
		}
	}
	var crlf [2]byte
	if _, err := io.ReadFull(r, crlf[:]); err != nil {
		return nil, unexpected(err)
	}
	if crlf != [2]byte{'\r', '\n'} {
		return nil, fmt.Errorf("%w: a bulk string not ended by CRLF", ErrProtocol)
	}
	return b, nil
}

// unexpected makes an EOF within a reply io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
