package handlers

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"testing"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
	"golang.org/x/image/draw"
)

// In-process speed of each workload function (no HTTP, no pool). MB/s is
// reported through b.SetBytes.
func BenchmarkHash(b *testing.B) {
	data := bytes.Repeat([]byte{0xa5, 0x5a, 0x3c}, 1<<20/3+1)[:1<<20]
	for _, algo := range HashAlgos() {
		b.Run(algo+"/1MiB", func(b *testing.B) {
			p := Params{"algo": algo}
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := runHash(nil, p, data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCompress(b *testing.B) {
	var text bytes.Buffer
	for i := 0; text.Len() < 1<<20; i++ {
		fmt.Fprintf(&text, "line %d: the quick brown fox jumps over the lazy dog %d times\n", i, i*7%13)
	}
	data := text.Bytes()[:1<<20]
	for _, codec := range []string{"gzip", "zstd", "s2", "snappy", "brotli"} {
		p := Params{"codec": codec}
		packed, _ := runCompress(nil, p, data)
		b.Run(codec+"/compress-1MiB", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				runCompress(nil, p, data)
			}
			b.ReportMetric(float64(len(data))/float64(len(packed)), "ratio")
		})
		b.Run(codec+"/decompress-1MiB", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := runDecompress(b.Context(), p, packed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPasswordDefaults(b *testing.B) {
	for _, algo := range []string{"argon2id", "bcrypt", "scrypt"} {
		b.Run(algo, func(b *testing.B) {
			body := []byte(`{"password":"correct horse battery staple"}`)
			for b.Loop() {
				if _, err := runPasswordHash(nil, Params{"algo": algo}, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The decoder choice for thumbnails: 12 MP JPEG → 400 px, standard library
// (full-size decode) against jpegn (DCT-scaled decode, the pipeline used),
// both resampled with Catmull-Rom.
func BenchmarkThumbnail12MP(b *testing.B) {
	var buf bytes.Buffer
	jpeg.Encode(&buf, sampleimages.Photo(4000, 3000), &jpeg.Options{Quality: 90})
	input := buf.Bytes()
	b.Run("stdlib-jpeg+catmullrom", func(b *testing.B) {
		for b.Loop() {
			src, err := jpeg.Decode(bytes.NewReader(input))
			if err != nil {
				b.Fatal(err)
			}
			dst := image.NewRGBA(image.Rect(0, 0, 400, 300))
			draw.CatmullRom.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Over, nil)
		}
	})
	b.Run("jpegn-dct-scaled+catmullrom", func(b *testing.B) {
		for b.Loop() {
			if _, err := runResize(b.Context(), Params{"width": "400"}, input); err != nil {
				b.Fatal(err)
			}
		}
	})
}
