package handlers

import (
	"image"
	"image/color"
	"testing"
)

// gravity= places what cover keeps: a 300×100 image whose left third is
// red, middle green and right blue, cut to 100×100, keeps the third its
// gravity names; smart keeps the one with detail (a checkerboard).
func TestResizeGravity(t *testing.T) {
	thirds := image.NewNRGBA(image.Rect(0, 0, 300, 100))
	for y := range 100 {
		for x := range 300 {
			c := []color.NRGBA{{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}}[x/100]
			thirds.SetNRGBA(x, y, c)
		}
	}
	in := encodeAs(t, "png", thirds)
	for _, c := range []struct {
		gravity string
		want    color.NRGBA
	}{
		{"", color.NRGBA{0, 255, 0, 255}},
		{"west", color.NRGBA{255, 0, 0, 255}},
		{"we", color.NRGBA{255, 0, 0, 255}},
		{"east", color.NRGBA{0, 0, 255, 255}},
		{"north-east", color.NRGBA{0, 0, 255, 255}},
	} {
		img, _, err := resize(t, in, Params{"width": "100", "height": "100", "fit": "cover", "format": "png", "gravity": c.gravity})
		if err != nil {
			t.Fatalf("gravity=%s: %v", c.gravity, err)
		}
		if got := color.NRGBAModel.Convert(img.At(50, 50)); got != c.want {
			t.Errorf("gravity=%s: centre %v; want %v", c.gravity, got, c.want)
		}
	}

	// Smart: flat grey but for a checkerboard in the right third.
	busy := image.NewNRGBA(image.Rect(0, 0, 300, 100))
	for y := range 100 {
		for x := range 300 {
			v := uint8(128)
			if x >= 200 && (x/4+y/4)%2 == 0 {
				v = 255
			} else if x >= 200 {
				v = 0
			}
			busy.SetNRGBA(x, y, color.NRGBA{v, v, v, 255})
		}
	}
	img, _, err := resize(t, encodeAs(t, "png", busy), Params{"width": "100", "height": "100", "fit": "cover", "format": "png", "gravity": "smart"})
	if err != nil {
		t.Fatal(err)
	}
	flat := 0
	for x := range 100 {
		if r, _, _, _ := img.At(x, 50).RGBA(); r>>8 > 100 && r>>8 < 156 {
			flat++
		}
	}
	if flat > 10 {
		t.Errorf("gravity=smart kept %d flat grey columns of 100; want the checkerboard", flat)
	}
	if _, _, err := resize(t, in, Params{"width": "100", "height": "100", "fit": "cover", "gravity": "up"}); !hasStatus(err, 400, CodeBadParam) {
		t.Errorf("gravity=up: %v; want 400 bad_param", err)
	}
}
