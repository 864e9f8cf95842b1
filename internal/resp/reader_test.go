package resp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func parse(s string, maxBulk, maxArray int) (Value, error) {
	rd := reader{r: bufio.NewReader(strings.NewReader(s)), maxBulk: maxBulk, maxArray: maxArray}
	return rd.read()
}

func TestReadValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Value
	}{
		{"+OK\r\n", Value{Kind: '+', Str: []byte("OK")}},
		{"+\r\n", Value{Kind: '+', Str: []byte{}}},
		{"-ERR bad\r\n", Value{Kind: '-', Str: []byte("ERR bad")}},
		{":0\r\n", Value{Kind: ':'}},
		{":-9223372036854775808\r\n", Value{Kind: ':', Int: -9223372036854775808}},
		{":9223372036854775807\r\n", Value{Kind: ':', Int: 9223372036854775807}},
		{"$0\r\n\r\n", Value{Kind: '$', Str: []byte{}}},
		{"$5\r\na\r\nb\x00\r\n", Value{Kind: '$', Str: []byte("a\r\nb\x00")}},
		{"$-1\r\n", Value{Kind: '$', Null: true}},
		{"*-1\r\n", Value{Kind: '*', Null: true}},
		{"*0\r\n", Value{Kind: '*', Array: []Value{}}},
		{"*3\r\n:1\r\n:2\r\n$1\r\nx\r\n", Value{Kind: '*', Array: []Value{{Kind: ':', Int: 1}, {Kind: ':', Int: 2}, {Kind: '$', Str: []byte("x")}}}},
		{"*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n", Value{Kind: '*', Array: []Value{{Kind: '*', Array: []Value{{Kind: '*', Array: []Value{{Kind: '*', Array: []Value{{Kind: ':', Int: 7}}}}}}}}}},
		{"+" + strings.Repeat("a", maxLine-1) + "\r\n", Value{Kind: '+', Str: []byte(strings.Repeat("a", maxLine-1))}},
	} {
		got, err := parse(tc.in, 100, 10)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("read(%.40q) = %.80s, %v; want %.80s", tc.in, fmt.Sprintf("%+v", got), err, fmt.Sprintf("%+v", tc.want))
		}
	}
}

func TestReadMalformed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"", io.EOF},
		{"+OK", io.ErrUnexpectedEOF},
		{"+OK\n", ErrProtocol},
		{"\r\n", ErrProtocol},
		{"OK\r\n", ErrProtocol},
		{"_\r\n", ErrProtocol}, // RESP3's null
		{",1.5\r\n", ErrProtocol},
		{":\r\n", ErrProtocol},
		{":-\r\n", ErrProtocol},
		{":1x\r\n", ErrProtocol},
		{": 1\r\n", ErrProtocol},
		{":+1\r\n", ErrProtocol},
		{":9223372036854775808\r\n", ErrProtocol},
		{":12345678901234567890123\r\n", ErrProtocol},
		{"$-2\r\n", ErrProtocol},
		{"*-2\r\n", ErrProtocol},
		{"$-9223372036854775808\r\n", ErrProtocol},
		{"$3\r\nabcd\r\n", ErrProtocol},
		{"$3\r\nab", io.ErrUnexpectedEOF},
		{"$3\r\nabc", io.ErrUnexpectedEOF},
		{"$101\r\n", ErrTooLarge},
		{"$1073741824\r\n", ErrTooLarge},
		{"$60\r\n" + strings.Repeat("a", 60) + "\r\n", nil},
		{"*2\r\n$60\r\n" + strings.Repeat("a", 60) + "\r\n$60\r\n", ErrTooLarge}, // 120 > 100 in one reply
		{"*11\r\n", ErrTooLarge},
		{"*2\r\n:1\r\n", io.ErrUnexpectedEOF},
		{"*1\r\n", io.ErrUnexpectedEOF},
		{"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n", ErrProtocol}, // 5 deep
		{"+" + strings.Repeat("a", maxLine) + "\r\n", ErrProtocol},
		{"+" + strings.Repeat("a", 1<<20), ErrProtocol},
	} {
		_, err := parse(tc.in, 100, 10)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("read(%.40q) = %v; want %v", tc.in, err, tc.want)
		}
	}
}

// TestReadAnnouncedNotSent: memory follows the bytes received, not the
// length announced.
func TestReadAnnouncedNotSent(t *testing.T) {
	in := "$1073741824\r\n" + strings.Repeat("x", 100<<10)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := parse(in, 2<<30, 10)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a 1 GiB bulk string cut at 100 KiB: %v; want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("a 1 GiB bulk string cut at 100 KiB allocated %d bytes; want about 128 KiB", got)
	}
	// An announced array is no allocation either.
	in = strings.Repeat("*1000000\r\n", 4)
	runtime.ReadMemStats(&before)
	_, err = parse(in, 100, 1_000_000)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("arrays of a million, announced and never sent: %v; want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("arrays of a million, announced and never sent, allocated %d bytes", got)
	}
}

// TestReadLargeBulk reads a bulk string longer than the first chunk.
func TestReadLargeBulk(t *testing.T) {
	body := strings.Repeat("0123456789abcdef", 300_000) // 4.8 MB
	v, err := parse("$4800000\r\n"+body+"\r\n", 5<<20, 10)
	if err != nil || string(v.Str) != body {
		t.Fatalf("a 4.8 MB bulk string: %d bytes, %v", len(v.Str), err)
	}
}

// FuzzRead: any input parses or errs, never panics, and what parses is
// within the bounds.
func FuzzRead(f *testing.F) {
	for _, s := range []string{"+OK\r\n", "-ERR x\r\n", ":12\r\n", "$3\r\nabc\r\n", "$-1\r\n",
		"*2\r\n:1\r\n*1\r\n$0\r\n\r\n", "*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parse(s, 64, 8)
		if err != nil {
			return
		}
		var check func(v Value, depth int)
		check = func(v Value, depth int) {
			if depth > maxDepth || len(v.Array) > 8 || (v.Kind == '$' && len(v.Str) > 64) || len(v.Str) > maxLine {
				t.Fatalf("read(%.80q) = %.80s: over the bounds", s, fmt.Sprintf("%+v", v))
			}
			for _, e := range v.Array {
				check(e, depth+1)
			}
		}
		check(v, 0)
	})
}
