package tail

import (
	"strings"
	"testing"
)

func TestBufferKeepsTheEnd(t *testing.T) {
	b := &Buffer{Max: 8}
	b.Write([]byte("0123456789"))
	b.Write([]byte("ab"))
	if got, want := b.String(), "\n[…]\n456789ab"; got != want {
		t.Errorf("tail = %q; want %q (no head kept, a drop marker, the last 8 bytes)", got, want)
	}
}

func TestBufferKeepsTheCauseAndTheEnd(t *testing.T) {
	b := &Buffer{Head: 40, Max: 16}
	b.Write([]byte("fatal error: runtime: out of memory\n"))
	b.Write([]byte(strings.Repeat("goroutine stack frame\n", 500)))
	b.Write([]byte("last line\n"))
	got := b.String()
	if !strings.HasPrefix(got, "fatal error: runtime: out of memory") || !strings.HasSuffix(got, "last line\n") ||
		!strings.Contains(got, "[…]") || len(got) > 40+16+10 {
		t.Errorf("buffer = %q; want the cause, a marker and the end", got)
	}
	short := &Buffer{Head: 40, Max: 16}
	short.Write([]byte("all of it"))
	if short.String() != "all of it" {
		t.Errorf("short stream = %q", short.String())
	}
}

func TestBufferLimit(t *testing.T) {
	b := &Buffer{Head: 4, Max: 4, Limit: 10}
	if n, err := b.Write([]byte("0123456789")); n != 10 || err != nil {
		t.Fatalf("Write within the limit = %d, %v", n, err)
	}
	if n, err := b.Write([]byte("x")); n != 0 || err != ErrLimit {
		t.Errorf("Write past the limit = %d, %v; want 0, ErrLimit", n, err)
	}
	if got := b.String(); got != "0123\n[…]\n6789" {
		t.Errorf("String = %q", got)
	}
}
