package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"github.com/gen2brain/jpegn"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"runtime"
	"testing"

	"github.com/HugoSmits86/nativewebp"
	"github.com/hybrid-server/hybrid/internal/sampleimages"
	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/golden-*.png from the current pipeline")

func encodeAs(t testing.TB, format string, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch format {
	case "jpeg":
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90})
	case "png":
		err = png.Encode(&buf, img)
	case "gif":
		err = gif.Encode(&buf, img, nil)
	case "webp":
		err = nativewebp.Encode(&buf, img, nil)
	case "bmp":
		err = bmp.Encode(&buf, img)
	case "tiff":
		err = tiff.Encode(&buf, img, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func resize(t testing.TB, input []byte, p Params) (image.Image, string, error) {
	out, err := run(t, "image-resize", p, input)
	if err != nil {
		return nil, "", err
	}
	img, format, derr := image.Decode(bytes.NewReader(out))
	if derr != nil && sniff(out) == "webp" {
		h, _ := readHeader(out, DefaultMaxFrames)
		return image.NewRGBA(image.Rect(0, 0, h.Width, h.Height)), "webp", nil
	}
	if derr != nil {
		t.Fatalf("output does not decode: %v", derr)
	}
	return img, format, nil
}

func TestResizeEveryInputFormat(t *testing.T) {
	src := sampleimages.Photo(640, 480)
	for _, format := range []string{"jpeg", "png", "gif", "webp", "bmp", "tiff"} {
		input := encodeAs(t, format, src)
		info, err := run(t, "image-info", Params{}, input)
		var h imageHeader
		json.Unmarshal(info, &h)
		if err != nil || h.Format != format || h.Width != 640 || h.Height != 480 || h.Frames != 1 {
			t.Errorf("info of %s = %s, %v", format, info, err)
		}
		img, outFormat, err := resize(t, input, Params{"width": "160"})
		if err != nil {
			t.Fatalf("resize %s: %v", format, err)
		}
		if b := img.Bounds(); b.Dx() != 160 || b.Dy() != 120 || outFormat != "jpeg" {
			t.Errorf("resize %s to width 160 = %v %s; want 160×120 jpeg (aspect kept)", format, b, outFormat)
		}
	}
}

func TestResizeFitsAndFormats(t *testing.T) {
	input := encodeAs(t, "png", sampleimages.Photo(640, 480))
	for _, tc := range []struct {
		p    Params
		w, h int
		f    string
	}{
		{Params{"width": "100", "height": "100"}, 100, 75, "jpeg"},
		{Params{"width": "100", "height": "100", "fit": "inside"}, 100, 75, "jpeg"},
		{Params{"width": "100", "height": "100", "fit": "cover", "format": "png"}, 100, 100, "png"},
		{Params{"width": "100", "height": "50", "fit": "contain", "format": "gif"}, 100, 50, "gif"},
		{Params{"width": "90", "height": "90", "fit": "fill"}, 90, 90, "jpeg"},
		{Params{"height": "48", "format": "webp"}, 64, 48, "webp"},
		{Params{"width": "1280", "enlarge": "true"}, 1280, 960, "jpeg"}, // upscaling within the output bound
		// enlarge=false, the default: never past the source (640×480).
		{Params{"width": "1280"}, 640, 480, "jpeg"},
		{Params{"width": "1000", "height": "1000", "fit": "cover"}, 480, 480, "jpeg"},
		{Params{"width": "2000", "height": "100", "fit": "fill"}, 640, 100, "jpeg"},
		{Params{"width": "1280", "height": "1280", "fit": "contain", "format": "png"}, 640, 640, "png"},
	} {
		img, format, err := resize(t, input, tc.p)
		if err != nil {
			t.Fatalf("%v: %v", tc.p, err)
		}
		if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h || format != tc.f {
			t.Errorf("%v = %v %s; want %d×%d %s", tc.p, b, format, tc.w, tc.h, tc.f)
		}
	}
	for _, bad := range []Params{
		{}, {"width": "0"}, {"width": "-5"}, {"width": "abc"}, {"width": "10", "fit": "stretch"},
		{"width": "10", "format": "avif"}, {"width": "10", "quality": "0"}, {"width": "10", "frames": "all"},
		{"width": "10", "frames": "some", "format": "gif"}, {"width": "10", "enlarge": "yes"},
	} {
		if _, err := run(t, "image-resize", bad, input); !hasStatus(err, 400, CodeBadParam) {
			t.Errorf("%v = %v; want 400 bad_param", bad, err)
		}
	}
	if _, err := run(t, "image-resize", Params{"width": "20000", "height": "20000", "fit": "fill", "enlarge": "true", "max_output_pixels": "1000000"}, input); !hasStatus(err, 422, CodeImageTooLarge) {
		t.Errorf("upscale past the output bound = %v; want 422", err)
	}
}

// A phone photo stored sideways (orientation 6) comes out upright.
func TestEXIFOrientationIsApplied(t *testing.T) {
	input := sampleimages.WithOrientation(encodeAs(t, "jpeg", sampleimages.Photo(640, 480)), 6)
	info, _ := run(t, "image-info", Params{}, input)
	if !bytes.Contains(info, []byte(`"orientation":6`)) {
		t.Fatalf("info = %s; want orientation 6", info)
	}
	img, _, err := resize(t, input, Params{"width": "120"})
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 120 || b.Dy() != 160 {
		t.Errorf("sideways 640×480 resized to width 120 = %v; want 120×160 (upright)", b)
	}
}

// An animated GIF keeps every frame, its delays and its loop count with
// frames=all; by default only the first frame is resized.
func TestAnimatedGIF(t *testing.T) {
	anim := &gif.GIF{LoopCount: 0}
	pal := []color.Color{color.Black, color.White, color.RGBA{255, 0, 0, 255}}
	for i := range 3 {
		frame := image.NewPaletted(image.Rect(0, 0, 64, 48), pal)
		for x := range 64 {
			for y := range 48 {
				frame.SetColorIndex(x, y, uint8((x/8+y/8+i)%3))
			}
		}
		anim.Image = append(anim.Image, frame)
		anim.Delay = append(anim.Delay, 10*(i+1))
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, anim); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "image-resize", Params{"width": "32", "format": "gif", "frames": "all"}, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, err := gif.DecodeAll(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Image) != 3 || got.Config.Width != 32 || got.Config.Height != 24 || got.Delay[2] != 30 {
		t.Errorf("animated resize: %d frames %d×%d delays %v; want 3 frames 32×24, delays kept",
			len(got.Image), got.Config.Width, got.Config.Height, got.Delay)
	}
	one, _ := run(t, "image-resize", Params{"width": "32", "format": "gif"}, buf.Bytes())
	if g, _ := gif.DecodeAll(bytes.NewReader(one)); g == nil || len(g.Image) != 1 {
		t.Errorf("default resize of an animation kept more than the first frame")
	}
	// frames=all counts every frame against the pixel budget.
	if _, err := run(t, "image-resize", Params{"width": "32", "format": "gif", "frames": "all", "max_pixels": "5000"}, buf.Bytes()); !hasStatus(err, 422, CodeImageTooLarge) {
		t.Errorf("3 frames of 64×48 against a 5000-pixel budget = %v; want 422", err)
	}
}

// Bombs are refused from their header, before any pixel buffer exists.
func TestImageBombsAreRefusedFromTheHeader(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
	}{
		{"20000×20000 png", sampleimages.PNGHeader(20000, 20000)},
		{"60000×60000 jpeg", sampleimages.JPEGHeader(60000, 60000)},
		{"gif of 10000 frames", sampleimages.GIFFrames(10000)},
	} {
		if len(tc.input) > 200_000 {
			t.Fatalf("%s: %d bytes", tc.name, len(tc.input))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := run(t, "image-resize", Params{"width": "100"}, tc.input)
		runtime.ReadMemStats(&after)
		if !hasStatus(err, 422, CodeImageTooLarge) {
			t.Errorf("%s = %v; want 422 image_too_large", tc.name, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
			t.Errorf("%s: allocated %d KiB refusing it; want no pixel buffer", tc.name, grew>>10)
		}
	}
	// The header reader counts frames up to the server's bound, not beyond:
	// image-info refuses past it too, and reports the count within it.
	if _, err := run(t, "image-info", Params{"max_frames": "1000"}, sampleimages.GIFFrames(10000)); !hasStatus(err, 422, CodeImageTooLarge) {
		t.Errorf("info of the 10000-frame gif with a bound of 1000 = %v; want 422 image_too_large", err)
	}
	info, _ := run(t, "image-info", Params{"max_frames": "20000"}, sampleimages.GIFFrames(10000))
	if !bytes.Contains(info, []byte(`"frames":10000`)) {
		t.Errorf("info of the 10000-frame gif with a bound of 20000 = %s", info)
	}
	// A bound the server set wrongly is an error, not a silent default.
	if _, err := run(t, "image-resize", Params{"width": "100", "max_pixels": "lots"}, sampleimages.PNGHeader(16, 16)); !hasStatus(err, 500, "internal") {
		t.Errorf("resize with max_pixels=lots = %v; want 500 internal", err)
	}
}

func TestBadImagesGetTheirErrors(t *testing.T) {
	jpg := encodeAs(t, "jpeg", sampleimages.Photo(640, 480))
	png := encodeAs(t, "png", sampleimages.Photo(64, 48))
	for _, tc := range []struct {
		name   string
		input  []byte
		status int
		code   string
	}{
		{"truncated jpeg", jpg[:len(jpg)/2], 422, CodeBadImage},
		{"truncated png", png[:len(png)/2], 422, CodeBadImage},
		{"header-only jpeg", jpg[:20], 422, CodeBadImage},
		{"random bytes", bytes.Repeat([]byte{0x13, 0x37, 0x42}, 300), 415, CodeUnsupportedFormat},
		{"empty body", nil, 415, CodeUnsupportedFormat},
		{"zero-size png", sampleimages.PNGHeader(0, 10), 422, CodeBadImage},
	} {
		if _, err := run(t, "image-resize", Params{"width": "10"}, tc.input); !hasStatus(err, tc.status, tc.code) {
			t.Errorf("%s = %v; want %d %s", tc.name, err, tc.status, tc.code)
		}
	}
}

// zonePlate has every spatial frequency up to Nyquist: a resampler that
// aliases turns its fine rings into coarse moiré.
func zonePlate(n int) *image.Gray {
	img := image.NewGray(image.Rect(0, 0, n, n))
	for y := range n {
		for x := range n {
			dx, dy := float64(x-n/2), float64(y-n/2)
			img.SetGray(x, y, color.Gray{uint8(127.5 + 127.5*math.Cos(math.Pi*(dx*dx+dy*dy)/float64(n)))})
		}
	}
	return img
}

// areaAverage is the alias-free reference: each output pixel is the mean of
// the input pixels it covers.
func areaAverage(src *image.Gray, k int) *image.Gray {
	n := src.Bounds().Dx() / k
	dst := image.NewGray(image.Rect(0, 0, n, n))
	for y := range n {
		for x := range n {
			sum := 0
			for j := range k {
				for i := range k {
					sum += int(src.GrayAt(x*k+i, y*k+j).Y)
				}
			}
			dst.SetGray(x, y, color.Gray{uint8(sum / (k * k))})
		}
	}
	return dst
}

func meanAbsDiff(a image.Image, b *image.Gray) float64 {
	var sum float64
	bounds := b.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, _, _, _ := a.At(x, y).RGBA()
			sum += math.Abs(float64(r>>8) - float64(b.GrayAt(x, y).Y))
		}
	}
	return sum / float64(bounds.Dx()*bounds.Dy())
}

// A 10× downscale of a zone plate stays close to the area average; nearest
// neighbour (the aliased pipeline) is far from it.
func TestThumbnailsDoNotAlias(t *testing.T) {
	src := zonePlate(1200)
	ref := areaAverage(src, 10)
	img, _, err := resize(t, encodeAs(t, "png", src), Params{"width": "120", "format": "png"})
	if err != nil {
		t.Fatal(err)
	}
	ours := meanAbsDiff(img, ref)
	nearest := image.NewGray(image.Rect(0, 0, 120, 120))
	for y := range 120 {
		for x := range 120 {
			nearest.SetGray(x, y, src.GrayAt(x*10+5, y*10+5))
		}
	}
	aliased := meanAbsDiff(nearest, ref)
	t.Logf("mean abs difference from the area average: ours %.1f, nearest neighbour %.1f (of 255)", ours, aliased)
	if ours > 12 || ours > aliased/3 {
		t.Errorf("thumbnail differs from the alias-free reference by %.1f; nearest neighbour by %.1f", ours, aliased)
	}
}

// psnr is the peak signal-to-noise ratio of a against b, in dB.
func psnr(a, b image.Image) float64 {
	var se float64
	bounds := b.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			for _, d := range []float64{float64(r1>>8) - float64(r2>>8), float64(g1>>8) - float64(g2>>8), float64(b1>>8) - float64(b2>>8)} {
				se += d * d
			}
		}
	}
	mse := se / float64(3*bounds.Dx()*bounds.Dy())
	if mse == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(255*255/mse)
}

// The thumbnail of a 2400×1800 photo matches the committed reference within
// a perceptual tolerance (PSNR ≥ 38 dB), so a decoder or resampler change
// that visibly alters output fails here. -update-golden rewrites it.
func TestGoldenThumbnail(t *testing.T) {
	input := encodeAs(t, "jpeg", sampleimages.Photo(2400, 1800))
	img, _, err := resize(t, input, Params{"width": "300", "format": "png"})
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/golden-thumbnail.png"
	if *updateGolden {
		var buf bytes.Buffer
		png.Encode(&buf, img)
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update-golden once)", err)
	}
	want, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != want.Bounds() {
		t.Fatalf("thumbnail %v; golden %v", img.Bounds(), want.Bounds())
	}
	if p := psnr(img, want); p < 38 {
		t.Errorf("thumbnail PSNR %.1f dB against the golden image; want ≥ 38", p)
	}
}

func FuzzImageHeader(f *testing.F) {
	f.Add(sampleimages.PNGHeader(10, 10))
	f.Add(sampleimages.JPEGHeader(10, 10))
	f.Add(sampleimages.GIFFrames(3))
	f.Add(scanBomb(16, 16, MaxJPEGScans+1))      // past the scan cap
	f.Add(tiffOf(24, 16, 8, 8, true, false))     // deflated 8×8 tiles
	f.Add(tiffOf(16, 12, 0, 5, false, true))     // raw strips, one shared
	f.Add(pngRaw(f, 1, 5000, 0, 8, false, true)) // tall: its rows are box-shrunk for a wide output
	f.Add(pngRaw(f, 70, 70, 6, 16, true, false)) // 16-bit RGBA, interlaced, header only
	if b, err := os.ReadFile("testdata/progressive-color.jpeg"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		h, err := readHeader(input, DefaultMaxFrames)
		if err != nil {
			clientError(t, err)
			return
		}
		if h.Width <= 0 || h.Height <= 0 || h.Frames < 1 {
			t.Fatalf("header %+v accepted", h)
		}
		// Decode only what the bounds let through, as the resize path does.
		if int64(h.Width)*int64(h.Height)*int64(h.Frames) <= 1<<20 {
			if _, err := runResize(t.Context(), Params{"width": "16"}, input); err != nil {
				clientError(t, err)
			}
		}
	})
}

// Every EXIF orientation comes out upright from the 1/8 DC decode
// (internal/jpegdc) as from jpegn's own AutoRotate at 1/8.
func TestEXIFOrientationAtOneEighth(t *testing.T) {
	plain := encodeAs(t, "jpeg", sampleimages.Photo(1600, 1200))
	for o := 1; o <= 8; o++ {
		input := sampleimages.WithOrientation(plain, uint16(o))
		h, err := readHeader(input, DefaultMaxFrames)
		if err != nil || h.Orientation != o {
			t.Fatalf("orientation %d: header %+v, %v", o, h, err)
		}
		got, err := decode(context.Background(), h, input, 8)
		if err != nil {
			t.Fatal(err)
		}
		want, err := jpegn.Decode(bytes.NewReader(input), &jpegn.Options{ScaleDenom: 8, AutoRotate: true})
		if err != nil {
			t.Fatal(err)
		}
		if got.Bounds() != want.Bounds() {
			t.Fatalf("orientation %d: %v; jpegn %v", o, got.Bounds(), want.Bounds())
		}
		if p := psnr(got, want); p < 35 {
			t.Errorf("orientation %d: PSNR %.1f dB against jpegn's; want ≥ 35", o, p)
		}
	}
}
