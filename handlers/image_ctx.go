package handlers

import (
	"context"
	"errors"
	"image"
	"image/color"
	"image/color/palette"
	"io"
)

// The image work stops soon after its context is done, so that a task past
// its deadline gives its core back (issue 11). What reads its input
// progressively reads it through ctxReader; the loops that are ours check
// ctx per row or per frame. jpegn reads the whole input before decoding and
// x/image/draw's resampler cannot be interrupted: their work is bounded by
// the caps instead (declared pixels and decoded bytes, output pixels ×
// frames, the resampler's scratch, MaxJPEGScanPasses, MaxJPEGScans,
// MaxTIFFBlocks), and ctx is checked before and after them.

// ctxReader reads r until ctx is done, then fails with ctx's error: the one
// way a task's reads stop at its deadline. A decoder that reads as it
// decodes (png, gif, bmp, webp; tiff through ReadAt; the decompressors'
// output in compress.go) stops within one read of the deadline. It is not an
// io.ByteReader, so compress/flate and image/gif put a bufio.Reader in front:
// reads of 4 KiB, each a few milliseconds of inflating at most.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ReadAt reads in place when r is an io.ReaderAt (it lets tiff read its
// strips where they lie; without it tiff copies the whole input into a
// buffer of its own first), and fails with errors.ErrUnsupported otherwise.
func (c ctxReader) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	ra, ok := c.r.(io.ReaderAt)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	return ra.ReadAt(p, off)
}

// plan9RGB is palette.Plan9 as 8-bit RGB triples (every entry is opaque).
var plan9RGB = func() (p [256][3]int32) {
	for i, c := range palette.Plan9 {
		rgba := c.(color.RGBA)
		p[i] = [3]int32{int32(rgba.R), int32(rgba.G), int32(rgba.B)}
	}
	return p
}()

// plan9Ditherer quantises to the Plan 9 palette with Floyd–Steinberg error
// diffusion, as gif.Encode does through draw.FloydSteinberg, but about 20×
// faster and interruptibly: draw searches all 256 colours for every pixel
// (measured 0.5 µs a pixel, 24 s for one 7000×7000 frame, with no way to
// stop it), where this looks the nearest colour up per 15-bit colour cell,
// filled as cells are first met, and checks ctx every row. The diffused
// error keeps the exact colour, so the cell's rounding does not show. One
// ditherer serves all the frames of an animation; it is not safe for
// concurrent use.
type plan9Ditherer struct {
	nearest [1 << 15]uint16 // index+1 of the nearest entry to a cell's centre; 0 unknown
}

func (q *plan9Ditherer) index(r, g, b int32) uint8 {
	cell := r>>3<<10 | g>>3<<5 | b>>3
	if v := q.nearest[cell]; v != 0 {
		return uint8(v - 1)
	}
	cr, cg, cb := r&^7|4, g&^7|4, b&^7|4
	best, bestD := 0, int32(1<<30)
	for i, p := range plan9RGB {
		dr, dg, db := cr-p[0], cg-p[1], cb-p[2]
		if d := dr*dr + dg*dg + db*db; d < bestD {
			best, bestD = i, d
		}
	}
	q.nearest[cell] = uint16(best + 1)
	return uint8(best)
}

// dither returns src quantised to the Plan 9 palette, or ctx's error once
// ctx is done. src's colours are premultiplied: transparent becomes black.
func (q *plan9Ditherer) dither(ctx context.Context, src *image.RGBA) (*image.Paletted, error) {
	b := src.Bounds()
	w := b.Dx()
	dst := image.NewPaletted(b, palette.Plan9)
	// The error carried to this row and the next, in 16ths, with a pixel of
	// margin at each end.
	cur, next := make([][3]int32, w+2), make([][3]int32, w+2)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		in := src.Pix[src.PixOffset(b.Min.X, y):]
		out := dst.Pix[dst.PixOffset(b.Min.X, y):]
		for x := range w {
			var c [3]int32
			for k := range 3 {
				c[k] = min(255, max(0, int32(in[4*x+k])+(cur[x+1][k]+8)>>4))
			}
			i := q.index(c[0], c[1], c[2])
			out[x] = i
			for k, p := range plan9RGB[i] {
				e := c[k] - p
				cur[x+2][k] += 7 * e
				next[x][k] += 3 * e
				next[x+1][k] += 5 * e
				next[x+2][k] += e
			}
		}
		cur, next = next, cur
		clear(next)
	}
	return dst, nil
}
