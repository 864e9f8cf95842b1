package handlers

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/png"
	"testing"

	"github.com/hybrid-server/hybrid/server"
)

// Transparent pixels are flattened onto white for JPEG (which has no
// alpha; they came out black before), onto background= when given, and
// stay transparent in PNG otherwise.
func TestResizeBackground(t *testing.T) {
	src := image.NewNRGBA(image.Rect(0, 0, 64, 64)) // fully transparent
	var in bytes.Buffer
	if err := png.Encode(&in, src); err != nil {
		t.Fatal(err)
	}
	near := func(c color.Color, r, g, b, a uint8) bool {
		cr, cg, cb, ca := c.RGBA()
		d := func(x uint32, y uint8) bool { return int(x>>8)-int(y) <= 3 && int(y)-int(x>>8) <= 3 }
		return d(cr, r) && d(cg, g) && d(cb, b) && d(ca, a)
	}
	for _, c := range []struct {
		p          Params
		r, g, b, a uint8
	}{
		{Params{"width": "32", "format": "jpeg"}, 255, 255, 255, 255},
		{Params{"width": "32", "format": "jpeg", "background": "FF0000"}, 254, 0, 0, 255},
		{Params{"width": "32", "format": "png"}, 0, 0, 0, 0},
		{Params{"width": "32", "format": "png", "background": "00ff00"}, 0, 255, 0, 255},
	} {
		img, _, err := resize(t, in.Bytes(), c.p)
		if err != nil {
			t.Fatalf("%v: %v", c.p, err)
		}
		if got := img.At(16, 16); !near(got, c.r, c.g, c.b, c.a) {
			t.Errorf("%v: centre pixel %v; want about %d,%d,%d,%d", c.p, got, c.r, c.g, c.b, c.a)
		}
	}
	for _, bad := range []string{"fff", "gggggg", "ff00ff00", "#ff0000"} {
		_, _, err := resize(t, in.Bytes(), Params{"width": "32", "background": bad})
		var se *server.Error
		if !errors.As(err, &se) || se.Status != 400 {
			t.Errorf("background=%s: %v; want 400", bad, err)
		}
	}
}

// dpr multiplies the size asked for, from 1 to 8.
func TestResizeDPR(t *testing.T) {
	src := image.NewNRGBA(image.Rect(0, 0, 800, 600))
	var in bytes.Buffer
	png.Encode(&in, src)
	img, _, err := resize(t, in.Bytes(), Params{"width": "100", "dpr": "2.5", "format": "png"})
	if err != nil || img.Bounds().Dx() != 250 || img.Bounds().Dy() != 188 {
		t.Fatalf("width=100&dpr=2.5: %v, %v; want 250×188", img.Bounds(), err)
	}
	for _, bad := range []string{"0", "0.5", "9", "x", "NaN", "Inf"} {
		_, _, err := resize(t, in.Bytes(), Params{"width": "100", "dpr": bad})
		var se *server.Error
		if !errors.As(err, &se) || se.Status != 400 {
			t.Errorf("dpr=%s: %v; want 400", bad, err)
		}
	}
}
