package main

import (
	"bytes"
	"image"
	"image/jpeg"
	"image/png"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

func jpegOf(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Thumbnails through hybrid serve: the same bytes in every mode, the right
// size, format and orientation.
func TestThumbnailsInEveryMode(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--allow-mode-override", "--cache-size", "0") // each mode computes
	base := "http://" + c.addr
	photo := jpegOf(t, sampleimages.Photo(1600, 1200))
	sideways := sampleimages.WithOrientation(photo, 6)
	var clear bytes.Buffer // 64×64, every pixel transparent
	if err := png.Encode(&clear, image.NewNRGBA(image.Rect(0, 0, 64, 64))); err != nil {
		t.Fatal(err)
	}
	thirds := image.NewNRGBA(image.Rect(0, 0, 300, 100)) // red, green, blue thirds
	for i := 0; i < len(thirds.Pix); i += 4 {
		copy(thirds.Pix[i:], [][]byte{{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}}[(i/4%300)/100])
	}
	var thirdsPNG bytes.Buffer
	if err := png.Encode(&thirdsPNG, thirds); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, query string
		input       []byte
		w, h        int
		ctype       string
		centre      [3]int // the output's centre pixel, 8-bit RGB, when set
	}{
		{"cover, gravity east", "width=100&height=100&fit=cover&gravity=east&format=png", thirdsPNG.Bytes(), 100, 100, "image/png", [3]int{0, 0, 255}},
		{"landscape", "width=400", photo, 400, 300, "image/jpeg", [3]int{}},
		{"sideways phone photo", "width=300", sideways, 300, 400, "image/jpeg", [3]int{}},
		{"cover png", "width=200&height=200&fit=cover&format=png", photo, 200, 200, "image/png", [3]int{}},
		{"device pixel ratio", "width=100&dpr=2", photo, 200, 150, "image/jpeg", [3]int{}},
		{"transparent onto white", "width=32", clear.Bytes(), 32, 32, "image/jpeg", [3]int{255, 255, 255}},
		{"transparent onto background", "width=32&background=336699", clear.Bytes(), 32, 32, "image/jpeg", [3]int{0x33, 0x66, 0x99}},
	} {
		var first []byte
		for _, mode := range []string{"isolate", "pool", "inline"} {
			r := post(t, base+"/v1/image/resize?"+tc.query+"&mode="+mode, tc.input)
			if r.status != 200 || r.header.Get("Content-Type") != tc.ctype {
				t.Fatalf("%s (%s) = %d %s %.100s", tc.name, mode, r.status, r.header.Get("Content-Type"), r.body)
			}
			img, _, err := image.Decode(bytes.NewReader(r.body))
			if err != nil {
				t.Fatalf("%s (%s): %v", tc.name, mode, err)
			}
			if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Errorf("%s (%s) = %v; want %d×%d", tc.name, mode, b, tc.w, tc.h)
			}
			if tc.centre != [3]int{} {
				r, g, b, _ := img.At(tc.w/2, tc.h/2).RGBA()
				for i, v := range []uint32{r >> 8, g >> 8, b >> 8} {
					if d := int(v) - tc.centre[i]; d < -3 || d > 3 {
						t.Errorf("%s (%s): centre pixel %d,%d,%d; want about %v", tc.name, mode, r>>8, g>>8, b>>8, tc.centre)
						break
					}
				}
			}
			if first == nil {
				first = r.body
			} else if !bytes.Equal(first, r.body) {
				t.Errorf("%s: %s output differs from isolate's", tc.name, mode)
			}
		}
	}
	if r := post(t, base+"/v1/image/resize?width=400", photo); r.header.Get("X-Hybrid-Mode") != "isolate" {
		t.Errorf("default mode for images = %q; want isolate", r.header.Get("X-Hybrid-Mode"))
	}
	if r := post(t, base+"/v1/image/info", sideways); r.status != 200 || r.header.Get("X-Hybrid-Mode") != "inline" ||
		!strings.Contains(string(r.body), `"orientation":6`) {
		t.Errorf("info = %d %s (mode %s)", r.status, r.body, r.header.Get("X-Hybrid-Mode"))
	}
}

// Hostile images get their documented errors quickly; the worker's memory
// does not jump and it is the same process afterwards.
func TestHostileImagesOverHTTP(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--allow-mode-override", "--cache-size", "0") // each mode computes
	base := "http://" + c.addr
	pid := c.snapshot().Workers[0].PID
	rss := func() uint64 {
		var h struct {
			RSS uint64 `json:"rss_bytes"`
		}
		getJSON(freshClient(), base+"/health", &h)
		return h.RSS
	}
	photo := jpegOf(t, sampleimages.Photo(800, 600))
	before := rss()
	for _, tc := range []struct {
		name   string
		input  []byte
		status int
		code   string
	}{
		{"20000×20000 png", sampleimages.PNGHeader(20000, 20000), 422, "image_too_large"},
		{"60000×60000 jpeg", sampleimages.JPEGHeader(60000, 60000), 422, "image_too_large"},
		{"gif of 10000 frames", sampleimages.GIFFrames(10000), 422, "image_too_large"},
		{"truncated jpeg", photo[:len(photo)/2], 422, "bad_image"},
		{"random bytes", bytes.Repeat([]byte("not an image "), 100), 415, "unsupported_format"},
		{"empty body", nil, 415, "unsupported_format"},
	} {
		for _, mode := range []string{"inline", "isolate"} {
			start := time.Now()
			r := post(t, base+"/v1/image/resize?width=100&mode="+mode, tc.input)
			took := time.Since(start)
			if r.status != tc.status || !strings.Contains(string(r.body), `"code":"`+tc.code+`"`) {
				t.Errorf("%s (%s) = %d %s; want %d %s", tc.name, mode, r.status, r.body, tc.status, tc.code)
			}
			if took > time.Second {
				t.Errorf("%s (%s) took %v; want it refused quickly", tc.name, mode, took)
			}
		}
	}
	time.Sleep(600 * time.Millisecond) // RSS is sampled every 500ms
	if after := rss(); after > before+32<<20 {
		t.Errorf("worker RSS %d MiB → %d MiB after the hostile images", before>>20, after>>20)
	}
	if s := c.snapshot(); s.Workers[0].PID != pid || s.Forks != 1 {
		t.Errorf("the worker changed: %+v", s)
	}
}
