package handlers

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color/palette"
	"image/draw"
	"io"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

// The output budget counts every frame: 1,000 frames of 1×1 asked for at
// 7000×7000 are refused before any is decoded; one frame at that size is
// within it.
func TestGIFOutputBudgetCountsFrames(t *testing.T) {
	bomb := sampleimages.GIFFrames(1000)
	all := Params{"width": "7000", "height": "7000", "fit": "fill", "format": "gif", "frames": "all", "enlarge": "true"}
	start := time.Now()
	if _, err := run(t, "image-resize", all, bomb); !hasStatus(err, 422, CodeImageTooLarge) {
		t.Errorf("1000 frames at 7000×7000 = %v; want 422 image_too_large", err)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("refusing took %v", took)
	}
	small := Params{"width": "200", "height": "200", "fit": "fill", "format": "gif", "frames": "all"}
	if _, err := run(t, "image-resize", small, sampleimages.GIFFrames(100)); err != nil {
		t.Errorf("100 frames at 200×200 (4 MP in all) = %v; want done", err)
	}
}

// A task whose context is done stops: before decoding, inside a decoder that
// reads as it goes, and in the ditherer.
func TestImageWorkStopsWithItsContext(t *testing.T) {
	png := encodeAs(t, "png", sampleimages.Photo(1200, 900))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, format := range []string{"jpeg", "gif", "png"} {
		_, err := runResize(ctx, Params{"width": "300", "format": format}, png)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("resize to %s with a done context = %v; want context.Canceled", format, err)
		}
	}
	var q plan9Ditherer
	if _, err := q.dither(ctx, image.NewRGBA(image.Rect(0, 0, 10, 10))); !errors.Is(err, context.Canceled) {
		t.Errorf("dither with a done context = %v", err)
	}
	// A deadline in the middle of a decode: the PNG decoder's next read fails.
	ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	big := encodeAs(t, "png", sampleimages.Photo(2000, 1500))
	start := time.Now()
	_, err := runResize(ctx, Params{"width": "300"}, big)
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > 300*time.Millisecond {
		t.Errorf("resize of a 3 MP png with a 1 ms deadline = %v after %v; want DeadlineExceeded, soon", err, took)
	}
}

// The ditherer's output is as close to its input as draw.FloydSteinberg's.
func TestPlan9DithererMatchesDraw(t *testing.T) {
	src := sampleimages.Photo(320, 240)
	ours, err := new(plan9Ditherer).dither(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	theirs := image.NewPaletted(src.Bounds(), palette.Plan9)
	draw.FloydSteinberg.Draw(theirs, theirs.Bounds(), src, image.Point{})
	// Error diffusion trades per-pixel error for local averages: compare
	// 4×4 means, which is what the eye sees.
	a, b := psnr(blur4(ours), blur4(src)), psnr(blur4(theirs), blur4(src))
	t.Logf("PSNR of 4×4 means: ours %.1f dB, draw's %.1f dB", a, b)
	if a < b-1 {
		t.Errorf("dithered PSNR %.1f dB; draw.FloydSteinberg's %.1f dB", a, b)
	}
}

// blur4 is img's 4×4 block means.
func blur4(img image.Image) *image.RGBA {
	b := img.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx()/4, b.Dy()/4))
	for y := range b.Dy() / 4 {
		for x := range b.Dx() / 4 {
			var s [3]uint32
			for j := range 4 {
				for i := range 4 {
					r, g, bl, _ := img.At(b.Min.X+4*x+i, b.Min.Y+4*y+j).RGBA()
					s[0], s[1], s[2] = s[0]+r>>8, s[1]+g>>8, s[2]+bl>>8
				}
			}
			o := out.PixOffset(x, y)
			out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = uint8(s[0]/16), uint8(s[1]/16), uint8(s[2]/16), 255
		}
	}
	return out
}

// ctxReader stops reading once its context is done, reads in place where
// its reader can, and says so where it cannot.
func TestCtxReader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := ctxReader{ctx, bytes.NewReader([]byte("abcdef"))}
	p := make([]byte, 3)
	if n, err := r.ReadAt(p, 2); n != 3 || err != nil || string(p) != "cde" {
		t.Errorf("ReadAt(3, 2) = %d %q, %v; want 3 \"cde\"", n, p[:n], err)
	}
	if _, err := (ctxReader{ctx, io.LimitReader(bytes.NewReader(nil), 1)}).ReadAt(p, 0); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ReadAt on a plain io.Reader = %v; want errors.ErrUnsupported", err)
	}
	cancel()
	if _, err := r.Read(p); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel = %v; want context.Canceled", err)
	}
	if _, err := r.ReadAt(p, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt after cancel = %v; want context.Canceled", err)
	}
}
