package handlers

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

// scanBomb is a progressive JPEG of w×h grey pixels: a DC scan, then n empty
// AC refinement scans, each of which a decoder runs as a pass over every
// block. A COM segment pads it to the size jpegn expects of so many pixels.
func scanBomb(w, h, n int) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xdb, 0, 67, 0}
	b = append(b, bytes.Repeat([]byte{1}, 64)...)
	b = append(b, 0xff, 0xc2, 0, 11, 8, byte(h>>8), byte(h), byte(w>>8), byte(w), 1, 1, 0x11, 0)
	for _, class := range []byte{0x00, 0x10} { // DC and AC table 0: one 1-bit code
		b = append(b, 0xff, 0xc4, 0, 20, class, 1)
		b = append(b, make([]byte, 16)...)
	}
	if pad := w*h/1024 - len(b); pad > 0 {
		for pad > 0 {
			n := min(pad, 65000)
			b = append(b, 0xff, 0xfe, byte((n+2)>>8), byte(n+2))
			b = append(b, make([]byte, n)...)
			pad -= n
		}
	}
	b = append(b, 0xff, 0xda, 0, 8, 1, 1, 0x00, 0, 0, 0x00) // DC first
	for range n {
		b = append(b, 0xff, 0xda, 0, 8, 1, 1, 0x00, 1, 63, 0x10) // AC 1-63, refine bit 0
	}
	return append(b, 0xff, 0xd9)
}

// Real progressive and baseline files pass, and their scans and the passes
// they make over the image's blocks are counted.
func TestJPEGScansOfRealFiles(t *testing.T) {
	for _, tc := range []struct {
		file   string
		scans  int
		passes float64
	}{
		{"testdata/progressive-color.jpeg", 10, 14.0 / 3},       // libjpeg's default script, 4:4:4
		{"testdata/progressive-separate-dc.jpeg", 14, 16.0 / 3}, // a DC scan per component
		{"testdata/progressive-gray.jpeg", 6, 6},
	} {
		b, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		l, err := walkJPEG(b, MaxJPEGScans)
		if err != nil || l.scans != tc.scans || math.Abs(l.passes()-tc.passes) > 0.01 {
			t.Errorf("walkJPEG(%s) = %d scans, %.2f passes, %v; want %d, %.2f", tc.file, l.scans, l.passes(), err, tc.scans, tc.passes)
		}
		if _, _, err := resize(t, b, Params{"width": "50"}); err != nil {
			t.Errorf("resize %s: %v", tc.file, err)
		}
	}
	photo := sampleimages.WithOrientation(encodeAs(t, "jpeg", sampleimages.Photo(64, 48)), 6)
	if l, err := walkJPEG(photo, MaxJPEGScans); err != nil || l.scans != 1 || l.passes() != 1 || l.width != 64 || l.height != 48 || l.exif == nil {
		t.Errorf("baseline with EXIF: %+v, %v; want 1 scan, 1 pass, 64×48, the EXIF segment", l, err)
	}
}

// cjpeg's progressive script (libjpeg's default, which jpegtran
// -progressive writes too), where cjpeg is installed (Debian's
// libjpeg-turbo-progs): in colour at 4:2:0 and 4:4:4 and in grey, all
// within the budget.
func TestJPEGScansOfCjpeg(t *testing.T) {
	if _, err := exec.LookPath("cjpeg"); err != nil {
		t.Skip("SKIPPED: no cjpeg on this machine (apt-get install libjpeg-turbo-progs); the testdata files cover libjpeg's script")
	}
	photo := sampleimages.Photo(160, 120)
	ppm := fmt.Appendf(nil, "P6 160 120 255\n")
	for i := 0; i < len(photo.Pix); i += 4 {
		ppm = append(ppm, photo.Pix[i:i+3]...)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"4:2:0", []string{"-progressive"}},
		{"4:4:4", []string{"-progressive", "-sample", "1x1"}},
		{"grey", []string{"-progressive", "-grayscale"}},
	} {
		cmd := exec.Command("cjpeg", tc.args...)
		cmd.Stdin = bytes.NewReader(ppm)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cjpeg %v: %v", tc.args, err)
		}
		l, err := walkJPEG(out, MaxJPEGScans)
		if err != nil || l.passes() > MaxJPEGScanPasses {
			t.Errorf("cjpeg %s: %d scans, %.2f passes, %v; want within %d", tc.name, l.scans, l.passes(), err, MaxJPEGScanPasses)
		}
		t.Logf("cjpeg %s: %d scans, %.2f passes", tc.name, l.scans, l.passes())
		if _, _, err := resize(t, out, Params{"width": "50"}); err != nil {
			t.Errorf("resize cjpeg %s: %v", tc.name, err)
		}
	}
}

// The scans are refused past the budget of passes or the count, from the
// header, cheaply; at the budget the file goes on to be decoded.
func TestJPEGScanBombIsRefused(t *testing.T) {
	atBudget := scanBomb(64, 64, MaxJPEGScanPasses-1) // a DC scan, then 9 refinements
	if _, err := run(t, "image-info", Params{}, atBudget); err != nil {
		t.Errorf("%d passes: %v; want accepted", MaxJPEGScanPasses, err)
	}
	if _, err := run(t, "image-resize", Params{"width": "16"}, atBudget); err != nil {
		t.Errorf("resize of %d passes: %v; want decoded", MaxJPEGScanPasses, err)
	}
	// One component listed four times in one scan is four passes.
	twice := bytes.Replace(scanBomb(64, 64, MaxJPEGScanPasses-3), []byte{0xff, 0xda, 0, 8, 1, 1, 0x00, 0, 0, 0x00},
		[]byte{0xff, 0xda, 0, 14, 4, 1, 0x00, 1, 0x00, 1, 0x00, 1, 0x00, 0, 0, 0x00}, 1)
	cases := []struct {
		name  string
		input []byte
	}{
		{"one pass over the budget", scanBomb(64, 64, MaxJPEGScanPasses)},
		{"a DC scan listing its component four times", twice},
		{"63 scans at 49 MP", scanBomb(7000, 7000, MaxJPEGScans-1)},
		{"2,000,000 scans, 20 MB", scanBomb(7000, 7000, 2_000_000)},
	}
	start := time.Now()
	for _, tc := range cases {
		for _, name := range []string{"image-info", "image-resize"} {
			if _, err := run(t, name, Params{"width": "400"}, tc.input); !hasStatus(err, 422, CodeImageTooLarge) {
				t.Errorf("%s of %s = %v; want 422 image_too_large", name, tc.name, err)
			}
		}
	}
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Errorf("refusing took %v; want well under the cost of one scan pass", took)
	}
}

// The blocks of each component are padded to whole MCUs and weighed by
// their sampling: a 4:2:0 DC scan covers 1.5 times the luma's blocks.
func TestFrameComponents(t *testing.T) {
	sof := []byte{8, 0, 17, 0, 33, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1} // 33×17, 4:2:0
	comps, err := frameComponents(sof, 33, 17)
	if err != nil {
		t.Fatal(err)
	}
	// MCUs of 16×16: 3×2 of them; luma 6×4 blocks, chroma 3×2 each.
	if len(comps) != 3 || comps[0].blocks != 24 || comps[1].blocks != 6 || comps[2].blocks != 6 {
		t.Errorf("frameComponents(33×17, 4:2:0) = %+v; want 24, 6, 6 blocks", comps)
	}
	l := jpegLayout{comps: comps, blocks: 36}
	if got := l.scanBlocksOf([]byte{3, 1, 0, 2, 0, 3, 0}); got != 36 {
		t.Errorf("interleaved DC scan covers %d blocks; want 36", got)
	}
	if got := l.scanBlocksOf([]byte{1, 9, 0}); got != 24 {
		t.Errorf("a scan of an unknown component covers %d blocks; want the largest, 24", got)
	}
}

// The walk sees the scans the decoder would run and no others: what a
// segment's length covers is skipped, fill bytes, stuffed bytes and restart
// markers are not markers, and nothing after EOI counts.
func TestWalkJPEGMirrorsTheDecoder(t *testing.T) {
	sos := []byte{0xff, 0xda, 0, 8, 1, 1, 0, 1, 63, 0x10}
	head := scanBomb(8, 8, 0)
	head = head[:len(head)-2] // without EOI
	many := bytes.Repeat(sos, MaxJPEGScans)
	at := bytes.Index(head, []byte{0xff, 0xda})
	stray := append(append(append([]byte{}, head[:at]...), 0x99, 0x99), head[at:]...)
	for _, tc := range []struct {
		name  string
		input []byte
		scans int
		ok    bool
	}{
		{"scans hidden in a COM segment", append(append(append([]byte{}, head...), 0xff, 0xfe, byte((len(many)+2)>>8), byte(len(many)+2)), append(many, 0xff, 0xd9)...), 1, true},
		{"fill bytes before each SOS", append(append(append([]byte{}, head...), bytes.Repeat(append([]byte{0xff, 0xff}, sos...), 3)...), 0xff, 0xd9), 4, true},
		{"stuffed bytes and restarts in the data", append(append(append([]byte{}, head...), 0x12, 0xff, 0x00, 0x34, 0xff, 0xd3, 0x56), append(sos, 0xff, 0xd9)...), 2, true},
		{"stray bytes between segments", append(stray, 0xff, 0xd9), 1, true},
		{"scans after EOI", append(append(append([]byte{}, head...), 0xff, 0xd9), many...), 1, true},
		{"no EOI", append(append([]byte{}, head...), sos...), 2, false},
		{"scan before the frame header", append([]byte{0xff, 0xd8}, append(sos, 0xff, 0xd9)...), 0, false},
	} {
		l, err := walkJPEG(tc.input, MaxJPEGScans)
		if l.scans != tc.scans || (err == nil) != tc.ok {
			t.Errorf("%s: %d scans, %v; want %d, ok %v", tc.name, l.scans, err, tc.scans, tc.ok)
		}
	}
	// A file cut anywhere is an error, never a panic or an accepted header.
	b, _ := os.ReadFile("testdata/progressive-color.jpeg")
	for n := range len(b) - 1 {
		if _, err := walkJPEG(b[:n], MaxJPEGScans); err == nil {
			t.Fatalf("walkJPEG of the first %d of %d bytes: no error", n, len(b))
		}
	}
}

func BenchmarkWalkJPEG(b *testing.B) {
	photo := encodeAs(b, "jpeg", sampleimages.Photo(2400, 1800))
	b.SetBytes(int64(len(photo)))
	for b.Loop() {
		if _, err := walkJPEG(photo, MaxJPEGScans); err != nil {
			b.Fatal(err)
		}
	}
}
