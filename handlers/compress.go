package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/snappy"
	"github.com/klauspost/compress/zstd"
	"github.com/molecule-man/go-brrr"
	"github.com/valyala/fasthttp"
)

// shortInput is the input size under which a hash takes at most a few ms
// here, whatever the bytes (Workload.Short).
const shortInput = 1 << 20

// DefaultMaxOutput bounds a decompressed body unless --max-output says
// otherwise. A decompression bomb is refused after at most this many bytes,
// and memory follows the bound, not the bomb.
const DefaultMaxOutput = 64 << 20

// codec is one compression format. Levels are each codec's own: gzip 1–9,
// zstd 1–22 (zstd's scale, mapped onto klauspost's four encoders), s2 1–3
// (fast, better, best), snappy none, brotli 0–11. snappy and s2 use the
// framed (streaming) format.
type codec struct {
	contentType      string
	minLevel, maxLvl int
	defLevel         int
	hasLevel         bool
	compress         func(in []byte, level int) ([]byte, error)
	reader           func(r io.Reader, maxOutput int) (io.Reader, func(), error)
	// worst is the most CPU a MiB of input has cost at each level (index:
	// the level), at the largest input the level takes and over the data
	// shapes tried: random bytes, zeros, log text, words, and random
	// letters from alphabets of 2 to 64, which is what makes gzip 9,
	// brotli and zstd's best encoder slow. It says whether a task is short
	// (Workload.Short). Small inputs can cost more per MiB where a level
	// has a fixed cost (brotli 10 of 4 KiB: 12 ms), still under that 20 ms.
	worst []time.Duration
	// caps is the largest input each level takes (index: the level; 0 or
	// past the end: --max-body): see inputCap.
	caps []int
}

// Measured on the 2-core box (bench/RESULTS.md, issue 11), rounded up:
// ms of CPU per MiB of input at the worst data shape tried, at the level's
// cap (or 32 MiB). gzip 9 spends ~3.6 s on a MiB of two-letter random text,
// brotli 11 ~1.9 s on 512 KiB of it.
func msPerMiB(ms ...int) []time.Duration {
	d := make([]time.Duration, len(ms))
	for i, v := range ms {
		d[i] = time.Duration(v) * time.Millisecond
	}
	return d
}

// compressBudget is the most CPU one compression may cost at its level's
// worst: a level a request names can make it cost about this much, and no
// more, whatever its bytes. Around what the default levels cost on a
// --max-body input (gzip 6 of 32 MiB: ~0.5 s; brotli 5: ~1 s).
const compressBudget = time.Second

// inputCap is the largest input level takes: a power of two, the largest
// whose worst data shape costs at most compressBudget, as measured
// (BenchmarkLargestAllowed); 0 for no cap beyond --max-body. A table, not
// compressBudget divided by a rate: brotli's cost grows faster than its
// input (brotli 9 of alphabet-32 text: 0.3 s for 2 MiB, 0.75–1.16 s for
// 4 MiB, 2.9 s for 8 MiB), so a rate measured at one size says little of
// twice it.
func (c codec) inputCap(level int) int {
	if level >= len(c.caps) {
		return 0
	}
	return c.caps[level]
}

// shortCompression is the worst-case cost under which a compression is
// short (Workload.Short): run on the request's goroutine, its 504 can be
// late by at most this.
const shortCompression = 20 * time.Millisecond

var codecs = map[string]codec{
	"gzip": {
		contentType: "application/gzip", minLevel: 1, maxLvl: 9, defLevel: 6, hasLevel: true,
		worst: msPerMiB(0, 10, 10, 10, 15, 20, 20, 60, 160, 4000),
		caps:  []int{7: 16 << 20, 8: 4 << 20, 9: 256 << 10},
		compress: func(in []byte, level int) ([]byte, error) {
			var buf bytes.Buffer
			w, err := gzip.NewWriterLevel(&buf, level)
			if err != nil {
				return nil, err
			}
			return finish(&buf, w, in)
		},
		reader: func(r io.Reader, _ int) (io.Reader, func(), error) {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return nil, nil, err
			}
			return zr, func() { zr.Close() }, nil
		},
	},
	"zstd": {
		contentType: "application/zstd", minLevel: 1, maxLvl: 22, defLevel: 3, hasLevel: true,
		// klauspost's encoders: 1–2 fastest, 3–5 default, 6–9 better, 10– best
		// (its worst: 0.45 s a MiB once, 0.17 s at 2 MiB of alphabet-16
		// text since; the higher is kept).
		worst: msPerMiB(0, 10, 10, 10, 10, 10, 20, 20, 20, 20, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500),
		caps: []int{10: 2 << 20, 11: 2 << 20, 12: 2 << 20, 13: 2 << 20, 14: 2 << 20, 15: 2 << 20, 16: 2 << 20,
			17: 2 << 20, 18: 2 << 20, 19: 2 << 20, 20: 2 << 20, 21: 2 << 20, 22: 2 << 20},
		compress: func(in []byte, level int) ([]byte, error) {
			return zstdEncoder(level).EncodeAll(in, make([]byte, 0, len(in)/2+64)), nil
		},
		reader: func(r io.Reader, maxOutput int) (io.Reader, func(), error) {
			// The window bounds the decoder's memory whatever the frame claims.
			zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
				zstd.WithDecoderMaxMemory(uint64(maxOutput)+1),
				zstd.WithDecoderMaxWindow(uint64(min(maxOutput, 64<<20))+1))
			if err != nil {
				return nil, nil, err
			}
			return zr, zr.Close, nil
		},
	},
	"s2": {
		contentType: "application/x-s2", minLevel: 1, maxLvl: 3, defLevel: 1, hasLevel: true,
		worst: msPerMiB(0, 5, 10, 100),
		caps:  []int{3: 8 << 20},
		compress: func(in []byte, level int) ([]byte, error) {
			opts := []s2.WriterOption{s2.WriterConcurrency(1)}
			switch level {
			case 2:
				opts = append(opts, s2.WriterBetterCompression())
			case 3:
				opts = append(opts, s2.WriterBestCompression())
			}
			var buf bytes.Buffer
			return finish(&buf, s2.NewWriter(&buf, opts...), in)
		},
		reader: func(r io.Reader, maxOutput int) (io.Reader, func(), error) {
			return s2.NewReader(r, s2.ReaderMaxBlockSize(min(maxOutput, 4<<20))), func() {}, nil
		},
	},
	"snappy": {
		contentType: "application/x-snappy-framed", worst: msPerMiB(5),
		compress: func(in []byte, _ int) ([]byte, error) {
			var buf bytes.Buffer
			return finish(&buf, snappy.NewBufferedWriter(&buf), in)
		},
		reader: func(r io.Reader, _ int) (io.Reader, func(), error) {
			return snappy.NewReader(r), func() {}, nil
		},
	},
	"brotli": {
		contentType: "application/x-brotli", minLevel: 0, maxLvl: 11, defLevel: 5, hasLevel: true,
		// 5 of 32 MiB: ~1 s. 6 to 9 took twice that and more at their
		// former caps (32, 16, 8 and 8 MiB).
		worst: msPerMiB(5, 10, 15, 15, 25, 35, 60, 125, 200, 240, 1000, 2000),
		caps:  []int{6: 16 << 20, 7: 8 << 20, 8: 4 << 20, 9: 4 << 20, 10: 1 << 20, 11: 512 << 10},
		compress: func(in []byte, level int) ([]byte, error) {
			return brrr.Compress(in, level)
		},
		reader: func(r io.Reader, _ int) (io.Reader, func(), error) {
			br := brrr.NewReader(r)
			return br, func() { br.Close() }, nil
		},
	},
}

func finish(buf *bytes.Buffer, w io.WriteCloser, in []byte) ([]byte, error) {
	buf.Grow(len(in)/2 + 64)
	if _, err := w.Write(in); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// zstd encoders are safe for concurrent EncodeAll and costly to build: one per
// level, built on first use. EncodeAll blocks until one of the Encoder's
// `concurrency` internal encoders is free, so it gets one per core this
// process may use: with 1, every compression in the worker ran one at a
// time (hybrid bench showed compress-1m on one worker at half the rate of
// two).
var zstdEncoders [23]struct {
	once sync.Once
	enc  *zstd.Encoder
}

func zstdEncoder(level int) *zstd.Encoder {
	e := &zstdEncoders[level]
	e.once.Do(func() {
		e.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	})
	return e.enc
}

func init() {
	Register(&Workload{Name: "compress", Cacheable: true, Estimate: 10 * time.Millisecond, Group: "compress", CheckParams: checkCompress, Check: checkCompressInput, Run: runCompress,
		Short: func(p Params, n int) bool {
			c, level, err := compressArgs(p, n)
			return err == nil && level < len(c.worst) && c.worst[level]*time.Duration(n)/(1<<20) <= shortCompression
		},
		ContentTypeOf: func(p Params) string { return codecs[p["codec"]].contentType }})
	Register(&Workload{Name: "decompress", Estimate: 5 * time.Millisecond, Group: "compress", CheckParams: checkDecompress, Run: runDecompress,
		ContentType: "application/octet-stream"})
}

func lookupCodec(p Params) (codec, error) {
	c, ok := codecs[p["codec"]]
	if !ok {
		return codec{}, server.Errorf(fasthttp.StatusNotFound, CodeUnknownAlgo,
			"unknown codec %s; supported: brotli, gzip, s2, snappy, zstd", server.Quote(p["codec"]))
	}
	return c, nil
}

func compressLevel(c codec, p Params) (int, error) {
	if !c.hasLevel {
		if p["level"] != "" {
			return 0, badParam("level: codec %s has no levels", p["codec"])
		}
		return 0, nil
	}
	return intParam(p, "level", c.defLevel, c.minLevel, c.maxLvl)
}

func checkCompress(p Params) error {
	c, err := lookupCodec(p)
	if err != nil {
		return err
	}
	_, err = compressLevel(c, p)
	return err
}

// compressArgs are a compression's codec and level, for an input of n
// bytes: a slow level refuses more than it takes.
func compressArgs(p Params, n int) (codec, int, error) {
	c, err := lookupCodec(p)
	if err != nil {
		return c, 0, err
	}
	level, err := compressLevel(c, p)
	if err != nil {
		return c, 0, err
	}
	if limit := c.inputCap(level); limit > 0 && n > limit {
		return c, 0, unprocessable(CodeParamOutOfRange,
			"%s level %d takes at most %d bytes of input, got %d; use a lower level for larger inputs",
			p["codec"], level, limit, n)
	}
	return c, level, nil
}

func checkCompressInput(p Params, input []byte) error {
	_, _, err := compressArgs(p, len(input))
	return err
}

func runCompress(_ context.Context, p Params, input []byte) ([]byte, error) {
	c, level, err := compressArgs(p, len(input))
	if err != nil {
		return nil, err
	}
	return c.compress(input, level)
}

func checkDecompress(p Params) error {
	if _, err := lookupCodec(p); err != nil {
		return err
	}
	if p["level"] != "" {
		return badParam("level: decompression takes no level")
	}
	_, err := maxOutput(p)
	return err
}

func maxOutput(p Params) (int, error) {
	n, err := strconv.Atoi(p["max_output"])
	if p["max_output"] == "" {
		return DefaultMaxOutput, nil
	}
	if err != nil || n < 1 {
		return 0, fmt.Errorf("handlers: bad max_output %q", p["max_output"])
	}
	return n, nil
}

// runDecompress inflates input, refusing with 413 as soon as the output passes
// max_output (set by the server from --max-output, never by the client).
func runDecompress(ctx context.Context, p Params, input []byte) ([]byte, error) {
	c, err := lookupCodec(p)
	if err != nil {
		return nil, err
	}
	limit, err := maxOutput(p)
	if err != nil {
		return nil, err
	}
	in := &inflowGuard{ctx: ctx, r: bytes.NewReader(input)}
	r, closeFn, err := c.reader(in, limit)
	if err != nil {
		return nil, corrupt(p["codec"], err)
	}
	defer closeFn()
	out, err := readAtMost(outflow{ctxReader{ctx, r}, &in.produced}, limit, min(4*len(input)+512, 8<<20))
	switch {
	case len(out) > limit:
		return nil, server.Errorf(fasthttp.StatusRequestEntityTooLarge, CodeOutputTooLarge,
			"decompressed output exceeds the limit of %d bytes", limit)
	case errors.Is(err, zstd.ErrDecoderSizeExceeded), errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, server.Errorf(fasthttp.StatusRequestEntityTooLarge, CodeOutputTooLarge,
			"zstd frame needs more than the limit of %d bytes", limit)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return nil, err
	case err != nil:
		return nil, corrupt(p["codec"], err)
	}
	return out, nil
}

// readAtMost reads r to its end or to limit+1 bytes, whichever is first,
// into a buffer that starts at guess and doubles, but never past limit+1:
// a bytes.Buffer would double to twice the limit for the byte that tells
// a bomb, so the memory a decompression holds follows --max-output.
func readAtMost(r io.Reader, limit, guess int) ([]byte, error) {
	buf := make([]byte, 0, min(limit+1, max(guess, 512)))
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return buf, nil
			}
			grown := make([]byte, len(buf), min(2*cap(buf), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return buf, err
		}
	}
}

// inflowGuard is a decompressor's input. It stops at the deadline, as
// ctxReader does, and it refuses a stream that has taken more than
// inflowFree bytes while giving less than an eighth of that back: real
// compressed data never shrinks as it inflates, but blocks that decode to
// nothing cost the decoder all the same (32 MiB of empty deflate blocks:
// 2.6 s of CPU for no output, 30× the honest cost of 32 MiB), and inside
// one Read a decoder goes on taking input until it has output to give, so
// the output side alone cannot see them. A decoder reads ahead by at most
// a block (zstd's 128 KiB), far inside the margin.
type inflowGuard struct {
	ctx      context.Context
	r        io.Reader
	consumed int
	produced atomic.Int64 // set by outflow (a decoder may read ahead on a goroutine of its own)
}

const inflowFree = 1 << 20

var errShrinks = errors.New("it inflates to less than an eighth of its size")

func (g *inflowGuard) Read(p []byte) (int, error) {
	if err := g.ctx.Err(); err != nil {
		return 0, err
	}
	if g.consumed > inflowFree && g.produced.Load() < int64(g.consumed/8) {
		return 0, errShrinks
	}
	n, err := g.r.Read(p)
	g.consumed += n
	return n, err
}

// outflow counts what a decompressor gives, for its inflowGuard.
type outflow struct {
	r        io.Reader
	produced *atomic.Int64
}

func (o outflow) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	o.produced.Add(int64(n))
	return n, err
}

func corrupt(codec string, err error) error {
	return unprocessable(CodeCorruptInput, "corrupt %s input: %v", codec, err)
}
