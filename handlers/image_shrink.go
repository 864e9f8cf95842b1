package handlers

import (
	"context"
	"encoding/binary"
	"image"

	"golang.org/x/image/draw"
)

// boxShrink averages src in blocks of kx×ky pixels into an RGBA of
// (width/kx)×(height/ky): the last column and row of blocks take the
// remainder, so every source pixel counts and the geometry stays within a
// block of the source's. It is the cheap first stage of a large reduction
// (libvips's shrink before its reduce), one pass over the source, which
// leaves the Catmull-Rom resampler a source of at most about twice the
// scaled size. Sums are of premultiplied 8-bit values, so transparency
// averages correctly. It stops with ctx's error once ctx is done.
func boxShrink(ctx context.Context, src image.Image, kx, ky int) (*image.RGBA, error) {
	b := src.Bounds()
	sw, sh := b.Dx(), b.Dy()
	kx, ky = max(1, min(kx, sw)), max(1, min(ky, sh)) // a GIF's first frame may be smaller than its canvas
	dw, dh := sw/kx, sh/ky
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	row := image.NewRGBA(image.Rect(0, 0, sw, 1))
	cols := make([]uint64, 4*sw) // per source column, the sums of the block's rows
	for y := range dh {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		y0, y1 := y*ky, (y+1)*ky
		if y == dh-1 {
			y1 = sh
		}
		clear(cols)
		for sy := y0; sy < y1; sy++ {
			// draw converts any decoder's type to RGBA, with fast paths for
			// the common ones.
			draw.Draw(row, row.Rect, src, image.Pt(b.Min.X, b.Min.Y+sy), draw.Src)
			for i, v := range row.Pix {
				cols[i] += uint64(v)
			}
		}
		out := dst.Pix[y*dst.Stride:]
		for x := range dw {
			x0, x1 := x*kx, (x+1)*kx
			if x == dw-1 {
				x1 = sw
			}
			var sum [4]uint64
			for sx := x0; sx < x1; sx++ {
				c := cols[4*sx : 4*sx+4]
				sum[0], sum[1], sum[2], sum[3] = sum[0]+c[0], sum[1]+c[1], sum[2]+c[2], sum[3]+c[3]
			}
			n := uint64((x1 - x0) * (y1 - y0))
			for c := range 4 {
				out[4*x+c] = uint8((sum[c] + n/2) / n)
			}
		}
	}
	return dst, nil
}

// pngBytesPerPixel is what image/png's decoder holds per pixel of a PNG
// whose header png.DecodeConfig accepted: its image type follows the IHDR's
// colour type and bit depth, and a tRNS chunk turns grey and truecolour
// into NRGBA or NRGBA64. An interlaced (Adam7) image counts twice: the
// decoder fills the full image from seven pass images of its own, which
// together are as large, and the garbage collector may hold them all.
func pngBytesPerPixel(b []byte) int {
	if len(b) < 33 {
		return 4
	}
	depth, colour, interlaced := b[24], b[25], b[28] == 1
	trns := false
	for i := 8; i+8 <= len(b); { // the chunks before the first IDAT
		n, typ := int(binary.BigEndian.Uint32(b[i:])), string(b[i+4:i+8])
		if typ == "IDAT" || typ == "IEND" {
			break
		}
		if typ == "tRNS" {
			trns = true
			break
		}
		i += 12 + n
	}
	bpp := 4
	switch {
	case colour == 3: // paletted
		bpp = 1
	case colour == 0 && !trns: // grey: Gray or Gray16
		bpp = int(max(depth, 8)) / 8
	case depth == 16: // NRGBA64 or RGBA64
		bpp = 8
	}
	if interlaced {
		bpp *= 2
	}
	return bpp
}

// pngDataTooLarge reports whether a PNG's image data (its IDAT chunks) is
// more than its declared pixels can need. Deflate never makes data more
// than a few bytes per 64 KiB larger, so an honest PNG's IDAT is at most
// about its raw rows (a filter byte and the packed samples of each, per
// Adam7 pass when interlaced), and the margin here is generous: an eighth
// more, and 64 KiB. Past it the data is blocks that inflate to nothing,
// which cost the inflater all the same (a 1×1 PNG of 32 MiB of empty
// deflate blocks: 2.6 s of CPU, against 0.8 s for the largest honest PNG).
func pngDataTooLarge(b []byte, width, height int) (data, need int64, tooLarge bool) {
	if len(b) < 33 {
		return 0, 0, false
	}
	depth, colour, interlaced := int64(b[24]), b[25], b[28] == 1
	channels := map[byte]int64{0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
	if channels == 0 {
		channels = 4
	}
	w, h := int64(width), int64(height)
	need = h * (1 + (w*channels*depth+7)/8)
	if interlaced {
		need += 7 * h // at most one filter byte per row of each of the 7 passes, beside the bytes above
		need += 7 * 8 // and a partial byte per pass row end, bounded loosely
	}
	for i := 8; i+8 <= len(b); {
		n, typ := int64(binary.BigEndian.Uint32(b[i:])), string(b[i+4:i+8])
		if typ == "IDAT" {
			data += n
		}
		if typ == "IEND" || n > int64(len(b)) {
			break
		}
		i += 12 + int(n)
	}
	return data, need, data > need+need/8+64<<10
}
