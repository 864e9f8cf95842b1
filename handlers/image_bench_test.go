package handlers

import (
	"bytes"
	"image"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"os/exec"
	"testing"

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

// BenchmarkImageLargestAllowed is the yardstick the hostile-input bounds are
// measured against: what an honest image at the largest allowed size costs,
// next to the worst a hostile one may cost within the bounds. Run it short:
//
//	go test ./handlers -run '^$' -bench ImageLargestAllowed -benchtime=3x
func BenchmarkImageLargestAllowed(b *testing.B) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, gradient(7000, 7000), &jpeg.Options{Quality: 90}); err != nil {
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
	frame := image.NewPaletted(image.Rect(0, 0, 200, 200), palette.Plan9)
	for i := range frame.Pix {
		frame.Pix[i] = uint8(i / 200)
	}
	for range DefaultMaxFrames {
		anim.Image, anim.Delay = append(anim.Image, frame), append(anim.Delay, 2)
	}
	var gbuf bytes.Buffer
	if err := gif.EncodeAll(&gbuf, anim); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name, workload string
		p              Params
		input          []byte
	}{
		{"info/jpeg-49MP", "image-info", Params{}, photo},
		{"resize/jpeg-49MP-to-400", "image-resize", Params{"width": "400"}, photo},
		// The worst scans allowed: a DC scan and 9 empty refinements, 10
		// passes (MaxJPEGScanPasses); 63 of them, allowed before, cost 1.8 s.
		{"resize/jpeg-49MP-9-empty-scans-to-400", "image-resize", Params{"width": "400"}, scanBomb(7000, 7000, MaxJPEGScanPasses-1)},
		{"resize/jpeg-49MP-progressive-to-400", "image-resize", Params{"width": "400"}, progressive},
		{"resize/gif-1000-frames-to-100", "image-resize", Params{"width": "100", "format": "gif", "frames": "all"}, gbuf.Bytes()},
		{"resize/gif-to-one-49MP-frame", "image-resize", Params{"width": "7000", "height": "7000", "fit": "fill", "format": "gif"}, sampleimages.GIFFrames(1)},
		// 1×50,000 grey to 20,000×1: its rows are box-averaged 25,000 at a
		// time first (32 GB of resampler scratch before, a dead worker).
		{"resize/png-1x50000-to-20000x1", "image-resize", Params{"width": "20000", "height": "1", "fit": "fill", "format": "png"}, pngRaw(b, 1, 50000, 0, 8, false, true)},
		{"resize/gif-to-49MP-jpeg", "image-resize", Params{"width": "7000", "height": "7000", "fit": "fill"}, sampleimages.GIFFrames(1)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.input == nil {
				b.Skip("SKIPPED: no jpegtran on this machine (apt-get install libjpeg-turbo-progs)")
			}
			for b.Loop() {
				if _, err := run(b, bc.workload, bc.p, bc.input); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
