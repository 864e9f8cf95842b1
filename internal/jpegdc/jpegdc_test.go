package jpegdc

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/gen2brain/jpegn"
	"image"
	"image/color"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The reference is libjpeg-turbo itself: cjpeg makes every kind of file
// this package decodes, and djpeg -scale 1/8 decodes it. Luma must match
// byte for byte (-grayscale outputs the Y component as decoded), colour
// within 1 (libjpeg's YCbCr→RGB tables against Go's; -nosmooth: chroma
// replicated, as image.YCbCr does).
func tools(t testing.TB) (cjpeg, djpeg string) {
	t.Helper()
	var err1, err2 error
	cjpeg, err1 = exec.LookPath("cjpeg")
	djpeg, err2 = exec.LookPath("djpeg")
	if err1 != nil || err2 != nil {
		t.Skip("!!! SKIPPED: cjpeg/djpeg missing (apt-get install libjpeg-turbo-progs): jpegdc is NOT checked against libjpeg !!!")
	}
	return cjpeg, djpeg
}

// photo writes a PPM of a w×h picture: gradients, edges and noise, so that
// blocks have AC energy of every kind.
func photo(t testing.TB, dir string, w, h int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	fmt.Fprintf(&b, "P6\n%d %d\n255\n", w, h)
	for y := range h {
		for x := range w {
			n := r.IntN(60)
			edge := 0
			if (x/37+y/23)%2 == 0 {
				edge = 90
			}
			b.WriteByte(byte(min(255, x*255/w/2+edge+n)))
			b.WriteByte(byte(min(255, y*255/h/2+n)))
			b.WriteByte(byte(min(255, (x+y)%256/2+edge/2+n)))
		}
	}
	p := filepath.Join(dir, fmt.Sprintf("in-%d.ppm", seed))
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// pnm parses djpeg's P5/P6 output: four whitespace-separated tokens, one
// whitespace byte, the samples.
func pnm(t testing.TB, b []byte) (w, h, ch int, pix []byte) {
	t.Helper()
	var tok []string
	i := 0
	for len(tok) < 4 {
		for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
			i++
		}
		j := i
		for j < len(b) && !(b[j] == ' ' || b[j] == '\n' || b[j] == '\t' || b[j] == '\r') {
			j++
		}
		if j == i {
			t.Fatal("pnm: short header")
		}
		tok = append(tok, string(b[i:j]))
		i = j
	}
	fmt.Sscan(tok[1], &w)
	fmt.Sscan(tok[2], &h)
	ch = 1
	if tok[0] == "P6" {
		ch = 3
	}
	return w, h, ch, b[i+1:]
}

var variants = []struct {
	name string
	args []string
}{
	{"baseline-420", []string{"-quality", "90"}},
	{"baseline-444", []string{"-quality", "85", "-sample", "1x1"}},
	{"baseline-422", []string{"-quality", "75", "-sample", "2x1"}},
	{"baseline-440", []string{"-quality", "95", "-sample", "1x2"}},
	{"optimized", []string{"-quality", "80", "-optimize"}},
	{"restart-1-row", []string{"-quality", "90", "-restart", "1"}},
	{"restart-3-blocks", []string{"-quality", "90", "-restart", "3B"}},
	{"progressive-420", []string{"-quality", "90", "-progressive"}},
	{"progressive-444", []string{"-quality", "70", "-progressive", "-sample", "1x1"}},
	{"progressive-restart", []string{"-quality", "90", "-progressive", "-restart", "2B"}},
	{"grey", []string{"-quality", "90", "-grayscale"}},
	{"grey-progressive", []string{"-quality", "90", "-grayscale", "-progressive"}},
	{"q100", []string{"-quality", "100"}},
	{"q5", []string{"-quality", "5"}},
}

func TestAgainstLibjpeg(t *testing.T) {
	cjpeg, djpeg := tools(t)
	dir := t.TempDir()
	for _, size := range [][2]int{{640, 480}, {203, 117}, {9, 1}, {1, 30}, {1001, 757}} {
		src := photo(t, dir, size[0], size[1], uint64(size[0]*7+size[1]))
		for _, v := range variants {
			t.Run(fmt.Sprintf("%s/%dx%d", v.name, size[0], size[1]), func(t *testing.T) {
				jpg := filepath.Join(dir, v.name+".jpg")
				run(t, cjpeg, append(append([]string{}, v.args...), "-outfile", jpg, src)...)
				data, err := os.ReadFile(jpg)
				if err != nil {
					t.Fatal(err)
				}
				img, err := Decode(data)
				if err != nil {
					t.Fatal(err)
				}
				w, h, _, luma := pnm(t, run(t, djpeg, "-scale", "1/8", "-grayscale", "-pnm", jpg))
				if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
					t.Fatalf("size %v; libjpeg %d×%d", b, w, h)
				}
				for y := range h {
					for x := range w {
						var got byte
						switch im := img.(type) {
						case *image.Gray:
							got = im.GrayAt(x, y).Y
						case *image.YCbCr:
							got = im.YCbCrAt(x, y).Y
						}
						if want := luma[y*w+x]; got != want {
							t.Fatalf("luma at %d,%d: %d; libjpeg %d", x, y, got, want)
						}
					}
				}
				if _, ok := img.(*image.YCbCr); !ok {
					return
				}
				_, _, ch, rgb := pnm(t, run(t, djpeg, "-scale", "1/8", "-nosmooth", "-pnm", jpg))
				if ch != 3 {
					t.Fatal("djpeg gave no colour")
				}
				worst, sum := 0, 0
				for y := range h {
					for x := range w {
						c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
						o := rgb[3*(y*w+x):]
						for k, g := range []byte{c.R, c.G, c.B} {
							d := abs(int(g) - int(o[k]))
							worst, sum = max(worst, d), sum+d
						}
					}
				}
				mean := float64(sum) / float64(3*w*h)
				if img.(*image.YCbCr).SubsampleRatio == image.YCbCrSubsampleRatio420 {
					// libjpeg decodes 4:2:0 chroma at 1/8 with a 2×2 IDCT
					// (its DC and three lowest AC terms: jdmaster.c scales
					// chroma by IDCT rather than upsampling when it can),
					// where this package has the DC alone: the same
					// average, without its gradient across the 16×16 block.
					// On this picture's sharp colour edges they differ
					// (mean ~8–16); on a smooth one they must agree:
					// TestSmooth420.
					t.Logf("4:2:0: colour against libjpeg's 2×2 chroma: mean %.2f, max %d", mean, worst)
					return
				}
				if worst > 1 {
					t.Errorf("colour differs from libjpeg's by up to %d", worst)
				}
			})
		}
	}
}

// On a smooth picture libjpeg's 2×2 chroma and the DC alone agree: the
// chroma planes hold the right averages.
func TestSmooth420(t *testing.T) {
	cjpeg, djpeg := tools(t)
	dir := t.TempDir()
	w, h := 480, 320
	var b bytes.Buffer
	fmt.Fprintf(&b, "P6\n%d %d\n255\n", w, h)
	for y := range h {
		for x := range w {
			b.Write([]byte{byte(x * 255 / w), byte(y * 255 / h), byte(255 - (x+y)*255/(w+h))})
		}
	}
	src := filepath.Join(dir, "smooth.ppm")
	os.WriteFile(src, b.Bytes(), 0o644)
	for _, args := range [][]string{{"-quality", "90"}, {"-quality", "90", "-progressive"}} {
		jpg := filepath.Join(dir, "s.jpg")
		run(t, cjpeg, append(args, "-outfile", jpg, src)...)
		data, _ := os.ReadFile(jpg)
		img, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, rgb := pnm(t, run(t, djpeg, "-scale", "1/8", "-nosmooth", "-pnm", jpg))
		sum, worst := 0, 0
		for y := range h / 8 {
			for x := range w / 8 {
				c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
				o := rgb[3*(y*(w/8)+x):]
				for k, g := range []byte{c.R, c.G, c.B} {
					d := abs(int(g) - int(o[k]))
					sum, worst = sum+d, max(worst, d)
				}
			}
		}
		// The gradients rise ~4.3 a pixel at 1/8: a chroma value held over
		// two pixels is off by half that on average (~2.1) where libjpeg's
		// 2×2 IDCT follows the slope.
		if mean := float64(sum) / float64(3*w/8*h/8); mean > 3 || worst > 8 {
			t.Errorf("%v: a smooth 4:2:0 picture differs from libjpeg's by %.2f on average, up to %d", args, mean, worst)
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// What the package leaves to another decoder, and what it refuses.
func TestUnsupportedAndCorrupt(t *testing.T) {
	cjpeg, _ := tools(t)
	dir := t.TempDir()
	src := photo(t, dir, 64, 48, 3)
	for _, args := range [][]string{{"-arithmetic"}, {"-sample", "4x1"}, {"-rgb"}} {
		jpg := filepath.Join(dir, "u.jpg")
		run(t, cjpeg, append(args, "-outfile", jpg, src)...)
		data, _ := os.ReadFile(jpg)
		if _, err := Decode(data); !errors.Is(err, ErrUnsupported) {
			t.Errorf("cjpeg %v: %v; want ErrUnsupported", args, err)
		}
	}
	jpg := filepath.Join(dir, "ok.jpg")
	run(t, cjpeg, "-outfile", jpg, src)
	good, _ := os.ReadFile(jpg)
	for name, data := range map[string][]byte{
		"empty": nil, "not jpeg": []byte("GIF89a......"), "SOI only": {0xFF, 0xD8},
		"truncated header": good[:40],
	} {
		if _, err := Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v; want ErrCorrupt", name, err)
		}
	}
	// A file cut in its scan decodes what it has, as libjpeg does.
	if _, err := Decode(good[:len(good)*2/3]); err != nil {
		t.Errorf("cut in the scan: %v", err)
	}
}

// Every prefix and a sample of one-byte changes of real files: an error or
// an image, never a panic or a hang.
func FuzzDecode(f *testing.F) {
	cjpeg, _ := tools(f)
	dir := f.TempDir()
	src := photo(f, dir, 48, 40, 5)
	for _, v := range variants {
		jpg := filepath.Join(dir, "f.jpg")
		run(f, cjpeg, append(append([]string{}, v.args...), "-outfile", jpg, src)...)
		data, _ := os.ReadFile(jpg)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode(data)
		if err == nil && img.Bounds().Empty() {
			t.Fatal("an empty image and no error")
		}
	})
}

// The thumbnail case of issue 15: a 12 MP noisy photo at quality 90, to
// 1/8, against jpegn (hybrid's full decoder, at 1/8 in its IDCT) in one run.
func BenchmarkDecode12MP(b *testing.B) {
	cjpeg, _ := tools(b)
	dir := b.TempDir()
	src := photo(b, dir, 4000, 3000, 9)
	for _, v := range []struct{ name, arg string }{{"baseline", "-quality"}, {"progressive", "-progressive"}} {
		jpg := filepath.Join(dir, v.name+".jpg")
		args := []string{"-quality", "90", "-outfile", jpg, src}
		if v.arg == "-progressive" {
			args = append([]string{"-progressive"}, args...)
		}
		run(b, cjpeg, args...)
		data, _ := os.ReadFile(jpg)
		b.Run(v.name+"/jpegdc", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(v.name+"/jpegn-1-8", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := jpegn.Decode(bytes.NewReader(data), &jpegn.Options{ScaleDenom: 8}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
