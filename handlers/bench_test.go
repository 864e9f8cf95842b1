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

// The honest-input cost of each workload at the largest size or work its
// bounds allow (issue 11): the yardstick a hostile input's cost is held to.
// go test -run X -bench LargestAllowed -benchtime 3x ./handlers
func BenchmarkLargestAllowed(b *testing.B) {
	var text bytes.Buffer
	for i := 0; text.Len() < 32<<20; i++ {
		fmt.Fprintf(&text, "ts=%d level=info path=/v1/item/%d status=%d dur=%dms\n", i*7919, i*31%100000, 200+i%4*100, i%900)
	}
	max := text.Bytes()[:32<<20] // --max-body's default
	run := func(name string, w string, p Params, input []byte) {
		b.Run(name, func(b *testing.B) {
			wl, _ := Lookup(w)
			b.SetBytes(int64(len(input)))
			for b.Loop() {
				if _, err := wl.Run(b.Context(), p, input); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("hash-sha256/32MiB", "hash", Params{"algo": "sha256"}, max)
	run("compress-zstd-22/32MiB", "compress", Params{"codec": "zstd", "level": "22"}, max)
	run("compress-gzip-9/32MiB", "compress", Params{"codec": "gzip", "level": "9"}, max)
	run("compress-brotli-9/32MiB", "compress", Params{"codec": "brotli", "level": "9"}, max)
	run("compress-brotli-10/1MiB", "compress", Params{"codec": "brotli", "level": "10"}, max[:1<<20])
	run("compress-brotli-11/256KiB", "compress", Params{"codec": "brotli", "level": "11"}, max[:256<<10])
	packed, _ := runCompress(nil, Params{"codec": "zstd", "level": "19"}, bytes.Repeat([]byte{0}, DefaultMaxOutput))
	run("decompress-zstd/to-64MiB", "decompress", Params{"codec": "zstd"}, packed)
	pw := func(algo, params string) []byte {
		return []byte(`{"password":"correct horse battery staple","params":` + params + `}`)
	}
	run("password-argon2id/1GiB-pass", "password-hash", Params{"algo": "argon2id"}, pw("argon2id", `{"memory_kib":262144,"iterations":4}`))
	run("password-scrypt/n-r-p-2^21", "password-hash", Params{"algo": "scrypt"}, pw("scrypt", `{"n":262144,"r":8,"p":1}`))
	run("password-bcrypt/cost-14", "password-hash", Params{"algo": "bcrypt"}, pw("bcrypt", `{"cost":14}`))
}
