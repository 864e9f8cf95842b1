package handlers

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/png"
	"maps"
	"math/rand/v2"
	"runtime"
	"testing"

	"golang.org/x/image/tiff"
)

// pngRaw is a w×h PNG of the given colour type, bit depth and interlace,
// every sample 0x80, written by hand (image/png writes neither 16-bit grey
// with tRNS nor interlaced images). With rows false the IDAT is empty: a
// header only, for the checks made before decoding.
func pngRaw(t testing.TB, w, h int, colour, depth byte, interlaced, rows bool) []byte {
	t.Helper()
	chunk := func(b []byte, typ string, data []byte) []byte {
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		c := append([]byte(typ), data...)
		b = append(b, c...)
		return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(c))
	}
	ihdr := binary.BigEndian.AppendUint32(nil, uint32(w))
	ihdr = binary.BigEndian.AppendUint32(ihdr, uint32(h))
	il := byte(0)
	if interlaced {
		il = 1
	}
	ihdr = append(ihdr, depth, colour, 0, 0, il)
	b := chunk([]byte("\x89PNG\r\n\x1a\n"), "IHDR", ihdr)
	if colour == 3 {
		b = chunk(b, "PLTE", make([]byte, 3*256))
	}
	var z bytes.Buffer
	if rows {
		if interlaced {
			t.Fatal("pngRaw: no interlaced rows")
		}
		samples := map[byte]int{0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
		row := bytes.Repeat([]byte{0x80}, 1+(w*samples*int(depth)+7)/8)
		row[0] = 0 // filter: none
		zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
		for range h {
			zw.Write(row)
		}
		zw.Close()
	}
	b = chunk(b, "IDAT", z.Bytes())
	return chunk(b, "IEND", nil)
}

// planOf plans p for h with enlarge=true unless p says otherwise: the
// bounds these tests check are those of a resize that may scale up (with
// the default, enlarge=false, nothing is scaled past the source).
func planOf(t *testing.T, h imageHeader, p Params) (resizePlan, error) {
	t.Helper()
	if _, ok := p["enlarge"]; !ok {
		p = maps.Clone(p)
		p["enlarge"] = "true"
	}
	r, err := parseResize(p)
	if err != nil {
		t.Fatal(err)
	}
	if h.Frames == 0 {
		h.Frames = 1
	}
	if h.Orientation == 0 {
		h.Orientation = 1
	}
	if h.bytesPerPixel == 0 {
		h.bytesPerPixel = 4
	}
	return r.plan(h)
}

// The resampler's scratch (scaled width × decoded height × 32 bytes) is
// bounded: honest shapes are untouched, a tall source asked for a wide
// output is box-shrunk first, and what cannot be shrunk under the budget is
// refused.
func TestPlanBoundsTheResamplerScratch(t *testing.T) {
	for _, tc := range []struct {
		what       string
		h          imageHeader
		p          Params
		denom      int
		boxW, boxH int
		copies     bool
		refused    bool
	}{
		{"4000×3000 jpeg to 400: 1/8 scale, untouched", imageHeader{Format: "jpeg", Width: 4000, Height: 3000}, Params{"width": "400"}, 8, 1, 1, false, false},
		{"4000×3000 png to 400: untouched", imageHeader{Format: "png", Width: 4000, Height: 3000}, Params{"width": "400"}, 1, 1, 1, false, false},
		{"12 MP jpeg to 3000: untouched", imageHeader{Format: "jpeg", Width: 4000, Height: 3000}, Params{"width": "3000"}, 1, 1, 1, false, false},
		{"1080×30,000 screenshot to 400 wide: untouched", imageHeader{Format: "png", Width: 1080, Height: 30000}, Params{"width": "400"}, 1, 1, 1, false, false},
		{"7000×7000 to 6999×6999: 1.5 GB of scratch, past MaxScratch: refused", imageHeader{Format: "png", Width: 7000, Height: 7000}, Params{"width": "6999"}, 0, 0, 0, false, true},
		{"4000×4000 to 3000×3000: 12 Mi entries, untouched", imageHeader{Format: "png", Width: 4000, Height: 4000}, Params{"width": "3000"}, 1, 1, 1, false, false},
		{"7071×7071 to 14000×3571 fill (3.3 GB before, the second review): refused", imageHeader{Format: "png", Width: 7071, Height: 7071}, Params{"width": "14000", "height": "3571", "fit": "fill"}, 0, 0, 0, false, true},
		{"gif of 1,000 frames on 223×223 to 37,449×1 (30 s of work before): refused", imageHeader{Format: "gif", Width: 223, Height: 223, Frames: 1000}, Params{"width": "37449", "height": "1", "fit": "fill", "format": "gif", "frames": "all"}, 0, 0, 0, false, true},
		{"2000×2000 to 8000×4000 fill, an upscale: untouched", imageHeader{Format: "png", Width: 2000, Height: 2000}, Params{"width": "8000", "height": "4000", "fit": "fill"}, 1, 1, 1, false, false},
		{"a conversion at the same size: copied", imageHeader{Format: "png", Width: 7000, Height: 7000}, Params{"width": "7000", "format": "webp"}, 1, 1, 1, true, false},
		{"a jpeg whose 1/8 scale is the size: copied", imageHeader{Format: "jpeg", Width: 4000, Height: 3000}, Params{"width": "500"}, 8, 1, 1, true, false},
		{"1×50,000 to 20,000×1 fill (32 GB of scratch before): rows shrunk to 2", imageHeader{Format: "png", Width: 1, Height: 50000}, Params{"width": "20000", "height": "1", "fit": "fill"}, 1, 1, 25000, false, false},
		{"1×50,000 to 65,535×1 fill (x/image's int32 dw·sh overflows): rows shrunk", imageHeader{Format: "png", Width: 1, Height: 50000}, Params{"width": "65535", "height": "1", "fit": "fill"}, 1, 1, 25000, false, false},
		{"1×50,000 to 500×1 fill", imageHeader{Format: "png", Width: 1, Height: 50000}, Params{"width": "500", "height": "1", "fit": "fill"}, 1, 1, 25000, false, false},
		{"3000×9000 to 3000×1000 fill: shrunk as the budget needs", imageHeader{Format: "png", Width: 3000, Height: 9000}, Params{"width": "9000", "height": "1000", "fit": "fill"}, 1, 1, 5, false, false},
		{"1×50,000 to 7000×7000 fill: cannot be shrunk under", imageHeader{Format: "png", Width: 1, Height: 50000}, Params{"width": "7000", "height": "7000", "fit": "fill"}, 0, 0, 0, false, true},
		{"50,000,000×1 to 400: columns shrunk (the weights are 64 B a column)", imageHeader{Format: "png", Width: 50_000_000, Height: 1}, Params{"width": "400"}, 1, 62500, 1, false, false},
		{"gif animation 1×20,000 to 20,000×1 fill: refused, nothing is shrunk", imageHeader{Format: "gif", Width: 1, Height: 20000, Frames: 2}, Params{"width": "20000", "height": "1", "fit": "fill", "format": "gif", "frames": "all"}, 0, 0, 0, false, true},
		{"gif animation 200×200 to 100: untouched", imageHeader{Format: "gif", Width: 200, Height: 200, Frames: 1000}, Params{"width": "100", "format": "gif", "frames": "all"}, 1, 1, 1, false, false},
	} {
		p, err := planOf(t, tc.h, tc.p)
		if tc.refused {
			if !hasStatus(err, 422, CodeImageTooLarge) {
				t.Errorf("%s: %+v, %v; want 422 %s", tc.what, p, err, CodeImageTooLarge)
			} else {
				t.Logf("%s: %v", tc.what, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		if p.denom != tc.denom || p.boxW != tc.boxW || p.boxH != tc.boxH || p.copies() != tc.copies {
			t.Errorf("%s: plan %+v (copies %v); want denom %d, boxes %d×%d, copies %v", tc.what, p, p.copies(), tc.denom, tc.boxW, tc.boxH, tc.copies)
		}
		if s, b := p.scratch(), scratchBudget(p.decW, p.decH, p.scaledW, p.scaledH); s > b {
			t.Errorf("%s: scratch %d entries, budget %d", tc.what, s, b)
		}
	}
}

// Whatever the shape, a plan that is accepted keeps the resampler's scratch
// under its budget and under x/image's int32, and a box shrink leaves the
// resampler at least the scaled height.
func TestPlanScratchIsAlwaysBounded(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	side := func() int { return 1 + int(float64(70000)*rng.Float64()*rng.Float64()*rng.Float64()) }
	fits := []string{"inside", "cover", "fill", "contain"}
	accepted := 0
	for range 20000 {
		h := imageHeader{Format: []string{"png", "jpeg"}[rng.IntN(2)], Width: side(), Height: side()}
		p := Params{"width": itoa(min(side(), 1<<16)), "height": itoa(min(side(), 1<<16)), "fit": fits[rng.IntN(4)]}
		pl, err := planOf(t, h, p)
		if err != nil {
			continue
		}
		accepted++
		if s, b := pl.scratch(), scratchBudget(pl.decW, pl.decH, pl.scaledW, pl.scaledH); s > b || s >= 1<<31 {
			t.Fatalf("%+v %v: plan %+v: scratch %d entries, budget %d", h, p, pl, s, b)
		}
		if pl.boxH > 1 && pl.decH/pl.boxH < pl.scaledH {
			t.Fatalf("%+v %v: plan %+v leaves %d rows for %d", h, p, pl, pl.decH/pl.boxH, pl.scaledH)
		}
	}
	t.Logf("%d of 20000 random shapes accepted", accepted)
}

func itoa(n int) string { return string(appendInt(nil, n)) }

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// boxShrink averages blocks, the last row and column of blocks taking the
// remainder, from any image type and any origin.
func TestBoxShrink(t *testing.T) {
	src := image.NewGray(image.Rect(10, 20, 15, 27)) // 5×7, not at the origin
	for y := range 7 {
		for x := range 5 {
			src.SetGray(10+x, 20+y, color.Gray{uint8(10*y + x)})
		}
	}
	got, err := boxShrink(t.Context(), src, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got.Bounds() != image.Rect(0, 0, 2, 2) {
		t.Fatalf("bounds %v; want 2×2", got.Bounds())
	}
	// Block (0,0): x 0–1, y 0–2: mean 10·1 + 0.5 = 10.5 → 11 (rounded
	// half up). Block (1,1): x 2–4, y 3–6: mean 10·4.5 + 3 = 48.
	for _, c := range []struct{ x, y, want int }{{0, 0, 11}, {1, 0, 13}, {0, 1, 46}, {1, 1, 48}} {
		if v := got.RGBAAt(c.x, c.y); int(v.R) != c.want || v.G != v.R || v.A != 255 {
			t.Errorf("pixel (%d,%d) = %v; want grey %d", c.x, c.y, v, c.want)
		}
	}
	// A paletted image, shrunk to one pixel; premultiplied alpha averages.
	pal := image.NewPaletted(image.Rect(0, 0, 4, 4), palette.Plan9)
	half := image.NewNRGBA(image.Rect(0, 0, 2, 1))
	half.SetNRGBA(0, 0, color.NRGBA{200, 0, 0, 255})
	for _, c := range []struct {
		img  image.Image
		want color.RGBA
	}{{pal, color.RGBA{0, 0, 0, 255}}, {half, color.RGBA{100, 0, 0, 128}}} {
		got, err := boxShrink(t.Context(), c.img, 8, 8)
		if err != nil {
			t.Fatal(err)
		}
		if got.Bounds().Dx() != 1 || got.Bounds().Dy() != 1 || got.RGBAAt(0, 0) != c.want {
			t.Errorf("%T shrunk to %v %v; want 1×1 %v", c.img, got.Bounds(), got.RGBAAt(0, 0), c.want)
		}
	}
}

// The review's PNG: 1×50,000 grey (178 bytes) asked for 20,000×1. Before,
// x/image's scratch was 20,000 × 50,000 × 32 bytes (32 GB, a fatal out of
// memory); now the rows are box-shrunk first and it allocates about the
// output's size.
func TestResizeOfATallImageIsBounded(t *testing.T) {
	input := pngRaw(t, 1, 50000, 0, 8, false, true)
	for _, w := range []string{"20000", "1000", "500"} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		img, _, err := resize(t, input, Params{"width": w, "height": "1", "fit": "fill", "format": "png", "enlarge": "true"})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("width %s: %v", w, err)
		}
		if img.Bounds().Dx() != atoi(w) || img.Bounds().Dy() != 1 {
			t.Errorf("width %s: output %v", w, img.Bounds())
		}
		for x := range img.Bounds().Dx() {
			if r, _, _, _ := img.At(x, 0).RGBA(); r>>8 != 0x80 {
				t.Fatalf("width %s: pixel %d is %d; want the source's grey 128", w, x, r>>8)
			}
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
			t.Errorf("width %s: allocated %d MiB; want under 16", w, alloc>>20)
		} else {
			t.Logf("width %s: allocated %.1f MiB", w, float64(alloc)/(1<<20))
		}
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = 10*n + int(c-'0')
	}
	return n
}

// The bytes a decoded image takes are bounded, not only its pixels: the
// header says the decoder's image type.
func TestDecodedBytesAreBounded(t *testing.T) {
	for _, tc := range []struct {
		what             string
		colour, depth    byte
		interlaced, trns bool
		bpp              int
	}{
		{"grey 8", 0, 8, false, false, 1},
		{"grey 1", 0, 1, false, false, 1},
		{"grey 16", 0, 16, false, false, 2},
		{"grey 16 with tRNS: NRGBA64", 0, 16, false, true, 8},
		{"grey 8 with tRNS: NRGBA", 0, 8, false, true, 4},
		{"paletted", 3, 8, false, false, 1},
		{"RGB 8", 2, 8, false, false, 4},
		{"RGBA 8", 6, 8, false, false, 4},
		{"RGBA 16", 6, 16, false, false, 8},
		{"RGBA 16 interlaced", 6, 16, true, false, 16},
		{"grey-alpha 16", 4, 16, false, false, 8},
		{"RGB 8 interlaced", 2, 8, true, false, 8},
	} {
		b := pngRaw(t, 7000, 7000, tc.colour, tc.depth, tc.interlaced, false)
		if tc.trns { // before the IDAT
			at := bytes.Index(b, []byte("IDAT")) - 4
			trns := []byte{0, 0, 0, 2, 't', 'R', 'N', 'S', 0, 0, 0, 0, 0, 0}
			b = append(b[:at:at], append(trns, b[at:]...)...)
		}
		h, err := readHeader(b, DefaultMaxFrames)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if h.bytesPerPixel != tc.bpp {
			t.Errorf("%s: %d bytes per pixel; want %d", tc.what, h.bytesPerPixel, tc.bpp)
		}
		_, err = planOf(t, h, Params{"width": "100"})
		if refused := hasStatus(err, 422, CodeImageTooLarge); refused != (tc.bpp > MaxDecodedBytesPerPixel) {
			t.Errorf("%s at 7000×7000 (%d B/px): %v", tc.what, tc.bpp, err)
		}
	}
	// What x/image/tiff really makes, for the types it writes.
	for _, img := range []image.Image{
		image.NewGray(image.Rect(0, 0, 3, 3)), image.NewGray16(image.Rect(0, 0, 3, 3)),
		image.NewRGBA(image.Rect(0, 0, 3, 3)), image.NewNRGBA64(image.Rect(0, 0, 3, 3)),
		image.NewRGBA64(image.Rect(0, 0, 3, 3)), image.NewPaletted(image.Rect(0, 0, 3, 3), palette.Plan9),
	} {
		var buf bytes.Buffer
		if err := tiff.Encode(&buf, img, nil); err != nil {
			t.Fatal(err)
		}
		dec, err := tiff.Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		px, _ := dec.(interface{ PixOffset(int, int) int })
		if px == nil {
			t.Fatalf("%T has no PixOffset", dec)
		}
		if got, want := px.PixOffset(1, 0), tiffBytesPerPixel(buf.Bytes()); got != want {
			t.Errorf("tiff: %T written, %T decoded: %d bytes per pixel; tiffBytesPerPixel says %d", img, dec, got, want)
		}
	}
	// What image/png really makes, for the types it writes.
	for _, img := range []image.Image{
		image.NewGray(image.Rect(0, 0, 3, 3)), image.NewGray16(image.Rect(0, 0, 3, 3)),
		image.NewRGBA(image.Rect(0, 0, 3, 3)), image.NewNRGBA64(image.Rect(0, 0, 3, 3)),
		image.NewPaletted(image.Rect(0, 0, 3, 3), palette.Plan9),
	} {
		img.(interface{ Set(int, int, color.Color) }).Set(1, 1, color.NRGBA64{1, 2, 3, 0x8000})
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		dec, err := png.Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		var px interface{ PixOffset(int, int) int }
		px, _ = dec.(interface{ PixOffset(int, int) int })
		if px == nil {
			t.Fatalf("%T has no PixOffset", dec)
		}
		if got, want := px.PixOffset(1, 0), pngBytesPerPixel(buf.Bytes()); got != want {
			t.Errorf("%T written, %T decoded: %d bytes per pixel; pngBytesPerPixel says %d", img, dec, got, want)
		}
	}
}
