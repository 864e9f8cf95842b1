package handlers

import (
	"bytes"
	"os"
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

// Real progressive and baseline files pass, and their scans are counted.
func TestJPEGScansOfRealFiles(t *testing.T) {
	for _, tc := range []struct {
		file  string
		scans int
	}{
		{"testdata/progressive-color.jpeg", 10},       // libjpeg's default script
		{"testdata/progressive-separate-dc.jpeg", 14}, // a DC scan per component
		{"testdata/progressive-gray.jpeg", 6},
	} {
		b, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		l, err := walkJPEG(b, MaxJPEGScans)
		if err != nil || l.scans != tc.scans {
			t.Errorf("walkJPEG(%s) = %d scans, %v; want %d", tc.file, l.scans, err, tc.scans)
		}
		if _, _, err := resize(t, b, Params{"width": "50"}); err != nil {
			t.Errorf("resize %s: %v", tc.file, err)
		}
	}
	photo := sampleimages.WithOrientation(encodeAs(t, "jpeg", sampleimages.Photo(64, 48)), 6)
	if l, err := walkJPEG(photo, MaxJPEGScans); err != nil || l.scans != 1 || l.width != 64 || l.height != 48 || l.exif == nil {
		t.Errorf("baseline with EXIF: %+v, %v; want 1 scan, 64×48, the EXIF segment", l, err)
	}
}

// The scan count is refused past the cap, from the header, cheaply; at the
// cap the file goes on to be decoded.
func TestJPEGScanBombIsRefused(t *testing.T) {
	if _, err := run(t, "image-info", Params{}, scanBomb(64, 64, MaxJPEGScans-1)); err != nil {
		t.Errorf("%d scans: %v; want accepted", MaxJPEGScans, err)
	}
	if _, err := run(t, "image-resize", Params{"width": "16"}, scanBomb(64, 64, MaxJPEGScans-1)); err != nil {
		t.Errorf("resize of %d scans: %v; want decoded", MaxJPEGScans, err)
	}
	bomb := scanBomb(7000, 7000, 2_000_000) // 20 MB
	start := time.Now()
	for _, name := range []string{"image-info", "image-resize"} {
		if _, err := run(t, name, Params{"width": "400"}, bomb); !hasStatus(err, 422, CodeImageTooLarge) {
			t.Errorf("%s of %d MB of scans = %v; want 422 image_too_large", name, len(bomb)>>20, err)
		}
	}
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("refusing took %v; want well under the cost of one scan pass", took)
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
