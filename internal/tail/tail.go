// Package tail keeps the ends of a stream: what a child process wrote to
// stderr, for the log line that reports its crash. A Go runtime failure
// states its cause first ("fatal error: runtime: out of memory") and then
// prints kilobytes of stacks, so both ends matter.
package tail

import (
	"errors"
	"sync"
)

// Buffer is an io.Writer that keeps the first Head and the last Max bytes
// written to it. It is safe for concurrent use.
type Buffer struct {
	Head, Max int
	// Limit, when positive, is the most bytes Write takes in all: past it
	// Write fails with ErrLimit, so a copy from a pipe stops and its
	// writer blocks, instead of its flood costing the reader's CPU.
	Limit int64

	mu        sync.Mutex
	head, buf []byte
	dropped   bool
	total     int64
}

// ErrLimit is Write's error past Buffer.Limit.
var ErrLimit = errors.New("tail: write limit reached")

func (t *Buffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Limit > 0 && t.total+int64(len(b)) > t.Limit {
		t.dropped = true
		return 0, ErrLimit
	}
	t.total += int64(len(b))
	n := len(b)
	if room := t.Head - len(t.head); room > 0 {
		k := min(room, len(b))
		t.head = append(t.head, b[:k]...)
		b = b[k:]
	}
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.Max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped = true
	}
	return n, nil
}

// String returns the head and the tail, with a marker where bytes between
// them were dropped.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped {
		return string(t.head) + "\n[…]\n" + string(t.buf)
	}
	return string(t.head) + string(t.buf)
}
