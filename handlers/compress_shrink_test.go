package handlers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/klauspost/compress/gzip"
)

// emptyDeflateBlocks is a gzip stream of n bytes made of dynamic-Huffman
// deflate blocks that each decode to nothing: every block costs the decoder
// its table building, and the whole gives no byte.
func emptyDeflateBlocks(n int) []byte {
	var b []byte
	var acc uint64
	var bits uint
	put := func(v uint64, width uint) {
		acc |= v << bits
		bits += width
		for bits >= 8 {
			b = append(b, byte(acc))
			acc >>= 8
			bits -= 8
		}
	}
	b = append(b, 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255) // gzip header
	for len(b) < n {
		// BFINAL 0, BTYPE 2 (dynamic); HLIT 257, HDIST 1, HCLEN 18.
		put(0, 1)
		put(2, 2)
		put(0, 5)
		put(0, 5)
		put(14, 4)
		// Code-length code lengths: symbols 0 and 1 (orders 2 and 17) of length 1.
		for i := range 18 {
			l := uint64(0)
			if i == 2 || i == 17 {
				l = 1
			}
			put(l, 3)
		}
		// 256 literal lengths of 0, then end-of-block's of 1, then one
		// distance code of 0 (as a run of zeros: symbol 1 is length 1,
		// symbol 0 is length 0).
		put(1, 1)
		put(127, 7)
		put(1, 1)
		put(107, 7)
		put(0, 1)
		put(0, 1)
		// The block's only symbol: end of block.
		put(0, 1)
	}
	put(1, 1) // a last, empty fixed block
	put(1, 2)
	put(0, 7)
	if bits > 0 {
		b = append(b, byte(acc))
	}
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0) // CRC and size of nothing
}

// A stream that takes input without giving output is refused after its
// first MiB: 4 MiB of empty deflate blocks cost ~0.3 s of inflating for
// nothing (32 MiB, the body limit: 2.6 s, 30× an honest 32 MiB); honest
// streams, which never shrink as they inflate, pass.
func TestDecompressRefusesAStreamThatShrinks(t *testing.T) {
	bomb := emptyDeflateBlocks(4 << 20)
	start := time.Now()
	_, err := runDecompress(context.Background(), Params{"codec": "gzip"}, bomb)
	var se *server.Error
	if !errors.As(err, &se) || se.Code != CodeCorruptInput {
		t.Fatalf("4 MiB of empty deflate blocks: %v; want a %s error", err, CodeCorruptInput)
	}
	t.Logf("refused in %v", time.Since(start))

	// Incompressible data: gzip's output is a little larger than its input.
	raw := make([]byte, 4<<20)
	for i := range raw {
		raw[i] = byte(rand.Uint32())
	}
	var packed bytes.Buffer
	w := gzip.NewWriter(&packed)
	w.Write(raw)
	w.Close()
	out, err := runDecompress(context.Background(), Params{"codec": "gzip"}, packed.Bytes())
	if err != nil || !bytes.Equal(out, raw) {
		t.Fatalf("4 MiB of random bytes, gzipped: %d bytes, %v; want them back", len(out), err)
	}
}
