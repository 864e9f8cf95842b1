package handlers

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os/exec"
	"strconv"
	"testing"

	"github.com/HugoSmits86/nativewebp"
	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

// gradient is a cheap w×h test picture (sampleimages.Photo costs seconds at
// 49 MP).
func gradient(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		row := img.Pix[y*img.Stride:]
		for x := range w {
			row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = uint8(x*255/w), uint8(y*255/h), uint8((x^y)&0xff), 255
		}
	}
	return img
}

// bmp4 is a w×h BMP of 4 bits a pixel (16 grey levels), bottom-up: the
// only depth x/image/bmp reads at the 50 MP budget within --max-body (25 MB;
// 8 bits a pixel would be 50 MB, and bmp.Encode writes no fewer).
func bmp4(w, h int) []byte {
	le := binary.LittleEndian
	stride := (w*4 + 31) / 32 * 4
	const headers = 14 + 40 + 16*4
	b := make([]byte, 0, headers+stride*h)
	b = append(b, 'B', 'M')
	b = le.AppendUint32(b, uint32(headers+stride*h))
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, headers)
	b = le.AppendUint32(b, 40)
	b = le.AppendUint32(b, uint32(w))
	b = le.AppendUint32(b, uint32(h))
	b = le.AppendUint16(b, 1)
	b = le.AppendUint16(b, 4)
	b = le.AppendUint32(b, 0) // no compression
	b = le.AppendUint32(b, uint32(stride*h))
	b = le.AppendUint32(b, 2835)
	b = le.AppendUint32(b, 2835)
	b = le.AppendUint32(b, 16)
	b = le.AppendUint32(b, 0)
	for i := range 16 {
		g := byte(i * 17)
		b = append(b, g, g, g, 0)
	}
	row := make([]byte, stride)
	for y := range h {
		for x := 0; x < w; x += 2 {
			row[x/2] = byte((x*16/w)<<4 | ((x+1+y)*16/w)&15)
		}
		b = append(b, row...)
	}
	return b
}

// BenchmarkImageLargestAllowed is the yardstick the hostile-input bounds are
// measured against: what an honest image at the largest allowed size costs,
// next to the worst a hostile one may cost within the bounds: every input
// format at the pixel budget (--image-max-pixels, 50 MP: 7071²), PNG and
// WebP out at the output budget. Run it once (it takes about a minute,
// most of it making the inputs):
//
//	go test ./handlers -run '^$' -bench ImageLargestAllowed -benchtime=1x
//
// With -short (.ci/run) every case runs at 1/8 of each side, in seconds
// (its name still gives the full size).
func BenchmarkImageLargestAllowed(b *testing.B) {
	side, capSide, div := 7000, 7071, 1 // 7071² = 49,999,041 ≤ DefaultMaxPixels
	if testing.Short() {
		div = 8
		side, capSide = side/div, capSide/div
	}
	big := gradient(capSide, capSide)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, gradient(side, side), &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	photo := buf.Bytes()
	// The same, progressive (libjpeg's default script), where jpegtran is
	// installed; the case is skipped otherwise.
	var progressive []byte
	if cmd := exec.Command("jpegtran", "-progressive"); cmd.Err == nil {
		cmd.Stdin = bytes.NewReader(photo)
		progressive, _ = cmd.Output()
	}
	// 1,000 frames (the cap) of 200×200: 40 MP declared, under the 50 MP budget.
	anim := &gif.GIF{}
	frame := image.NewPaletted(image.Rect(0, 0, 200/div, 200/div), palette.Plan9)
	for i := range frame.Pix {
		frame.Pix[i] = uint8(i / (200 / div))
	}
	for range DefaultMaxFrames {
		anim.Image, anim.Delay = append(anim.Image, frame), append(anim.Delay, 2)
	}
	var gbuf bytes.Buffer
	if err := gif.EncodeAll(&gbuf, anim); err != nil {
		b.Fatal(err)
	}
	var pbuf, wbuf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&pbuf, big); err != nil {
		b.Fatal(err)
	}
	if err := nativewebp.Encode(&wbuf, big, nil); err != nil {
		b.Fatal(err)
	}
	// Deflated 28×28 tiles: 64,009 of them, under the 65,536 blocks a TIFF
	// may have (MaxTIFFBlocks), each its own zlib stream.
	tile := 28
	if div > 1 {
		tile = 8
	}
	tiffIn := tiffOf(capSide, capSide, tile, tile, true, false)
	sq, cs := strconv.Itoa(side), strconv.Itoa(capSide)
	// The upscales (a 1×1 GIF to 49 MP, a 1-pixel-wide PNG to 20,000
	// wide) say enlarge=true: the default, false, never scales past the
	// source.
	for _, bc := range []struct {
		name, workload string
		p              Params
		input          []byte
	}{
		{"info/jpeg-49MP", "image-info", Params{}, photo},
		{"resize/jpeg-49MP-to-400", "image-resize", Params{"width": "400"}, photo},
		// The worst scans allowed: a DC scan and 9 empty refinements, 10
		// passes (MaxJPEGScanPasses); 63 of them, allowed before, cost 1.8 s.
		{"resize/jpeg-49MP-9-empty-scans-to-400", "image-resize", Params{"width": "400"}, scanBomb(side, side, MaxJPEGScanPasses-1)},
		{"resize/jpeg-49MP-progressive-to-400", "image-resize", Params{"width": "400"}, progressive},
		{"resize/gif-1000-frames-to-100", "image-resize", Params{"width": "100", "format": "gif", "frames": "all"}, gbuf.Bytes()},
		{"resize/gif-to-one-49MP-frame", "image-resize", Params{"width": sq, "height": sq, "fit": "fill", "format": "gif", "enlarge": "true"}, sampleimages.GIFFrames(1)},
		// 1×50,000 grey to 20,000×1: its rows are box-averaged 25,000 at a
		// time first (32 GB of resampler scratch before, a dead worker).
		{"resize/png-1x50000-to-20000x1", "image-resize", Params{"width": "20000", "height": "1", "fit": "fill", "format": "png", "enlarge": "true"}, pngRaw(b, 1, 50000, 0, 8, false, true)},
		{"resize/gif-to-49MP-jpeg", "image-resize", Params{"width": sq, "height": sq, "fit": "fill", "enlarge": "true"}, sampleimages.GIFFrames(1)},
		// Each input format at the pixel budget.
		{"resize/png-50MP-to-400", "image-resize", Params{"width": "400"}, pbuf.Bytes()},
		{"resize/webp-50MP-to-400", "image-resize", Params{"width": "400"}, wbuf.Bytes()},
		{"resize/bmp-4bit-50MP-to-400", "image-resize", Params{"width": "400"}, bmp4(capSide, capSide)},
		{"resize/tiff-50MP-64009-deflate-tiles-to-400", "image-resize", Params{"width": "400"}, tiffIn},
		// PNG and WebP out at the output budget: through the resampler,
		// and at the same size (no resampler; 2.2 s and 812 MiB on the
		// pool, the costliest honest request seen).
		{"resize/gif-to-49MP-png", "image-resize", Params{"width": sq, "height": sq, "fit": "fill", "format": "png", "enlarge": "true"}, sampleimages.GIFFrames(1)},
		{"resize/gif-to-49MP-webp", "image-resize", Params{"width": sq, "height": sq, "fit": "fill", "format": "webp", "enlarge": "true"}, sampleimages.GIFFrames(1)},
		{"resize/png-50MP-to-same-size-webp", "image-resize", Params{"width": cs, "height": cs, "format": "webp"}, pbuf.Bytes()},
		{"resize/jpeg-49MP-to-same-size-png", "image-resize", Params{"width": sq, "height": sq, "format": "png"}, photo},
	} {
		largest(b, bc.name, bc.workload, bc.p, bc.input, 0)
	}
}
