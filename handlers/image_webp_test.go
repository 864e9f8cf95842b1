package handlers

import (
	"bytes"
	"image"
	"image/color"
	"testing"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
	"golang.org/x/image/webp"
)

// nativewebp panics on some images of very few colours (a 1×1 GIF frame,
// a uniform square); hybrid encodes them through the colour-indexed path
// instead, and they come out as WebP.
func TestWebPOfFewColours(t *testing.T) {
	uniform := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := 0; i < len(uniform.Pix); i += 4 {
		copy(uniform.Pix[i:], []byte{10, 200, 30, 255})
	}
	for _, c := range []struct {
		name  string
		input []byte
		p     Params
	}{
		{"1×1 gif frame", sampleimages.GIFFrames(1), Params{"width": "1", "format": "webp"}},
		{"uniform png", encodeAs(t, "png", uniform), Params{"width": "16", "format": "webp"}},
	} {
		out, err := run(t, "image-resize", c.p, c.input)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		img, err := webp.Decode(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("%s: output does not decode: %v", c.name, err)
		}
		if c.name == "uniform png" {
			if got := color.NRGBAModel.Convert(img.At(8, 8)); got != (color.NRGBA{10, 200, 30, 255}) {
				t.Errorf("%s: pixel %v; want 10,200,30", c.name, got)
			}
		}
	}
	if pal := exactPalette(uniform); pal == nil || len(pal.Palette) != 1 || pal.Palette[0] != (color.NRGBA{10, 200, 30, 255}) {
		t.Errorf("exactPalette of a uniform image = %v", pal)
	}
}
