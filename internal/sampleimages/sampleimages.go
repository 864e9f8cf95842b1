// Package sampleimages makes the images the tests and the bench need,
// deterministically and in memory: a photo-like picture, and hostile files
// that declare huge sizes in a few hundred bytes. The bench sends them (bench/scenario.go), so it is
// part of the binary; nothing else uses it.
package sampleimages

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"math"
)

// Photo is a photo-like image: smooth gradients with some detail.
func Photo(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			r := uint8(128 + 127*math.Sin(float64(x)/float64(w)*9))
			g := uint8(128 + 127*math.Cos(float64(y)/float64(h)*7))
			b := uint8((x*x + y*y) * 255 / (w*w + h*h))
			img.Set(x, y, color.RGBA{r, g, b, 255})
		}
	}
	return img
}

// PNGHeader is a valid PNG that declares w×h and holds almost nothing.
func PNGHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc.Sum32())
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	chunk("IHDR", append(ihdr, 8, 6, 0, 0, 0))
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// JPEGHeader is a JPEG that declares w×h in its frame header and ends.
func JPEGHeader(w, h uint16) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xdb, 0, 67, 0}
	b = append(b, bytes.Repeat([]byte{1}, 64)...)
	sof := []byte{0xff, 0xc0, 0, 17, 8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0}
	return append(append(b, sof...), 0xff, 0xd9)
}

// GIFFrames is a GIF of n 1×1 frames.
func GIFFrames(n int) []byte {
	b := []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff")
	for range n {
		b = append(b, 0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0)
	}
	return append(b, 0x3b)
}

// WithOrientation inserts an EXIF APP1 segment carrying orientation o right
// after a JPEG's SOI marker.
func WithOrientation(jpg []byte, o uint16) []byte {
	var t bytes.Buffer
	t.WriteString("MM\x00\x2a")
	binary.Write(&t, binary.BigEndian, uint32(8))           // first IFD
	binary.Write(&t, binary.BigEndian, uint16(1))           // one entry
	binary.Write(&t, binary.BigEndian, []uint16{0x0112, 3}) // Orientation, SHORT
	binary.Write(&t, binary.BigEndian, uint32(1))           // count
	binary.Write(&t, binary.BigEndian, []uint16{o, 0})      // value
	binary.Write(&t, binary.BigEndian, uint32(0))           // no next IFD
	payload := append([]byte("Exif\x00\x00"), t.Bytes()...)
	seg := []byte{0xff, 0xe1, 0, 0}
	binary.BigEndian.PutUint16(seg[2:], uint16(len(payload)+2))
	out := append(append(append([]byte{}, jpg[:2]...), seg...), payload...)
	return append(out, jpg[2:]...)
}
