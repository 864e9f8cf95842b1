package handlers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"testing"

	"github.com/hybrid-server/hybrid/server"
)

// A PNG whose image data is more than its pixels can need is refused from
// its header; honest PNGs, noise at the best compression included, pass.
func TestPNGDataBoundedByItsPixels(t *testing.T) {
	noise := image.NewNRGBA(image.Rect(0, 0, 256, 256))
	for i := range noise.Pix {
		noise.Pix[i] = byte(rand.Uint32())
	}
	var honest bytes.Buffer
	(&png.Encoder{CompressionLevel: png.BestCompression}).Encode(&honest, noise)
	if _, err := readHeader(honest.Bytes(), 1000); err != nil {
		t.Fatalf("honest noisy PNG: %v", err)
	}

	tiny := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	tiny.Set(0, 0, color.NRGBA{1, 2, 3, 255})
	var one bytes.Buffer
	png.Encode(&one, tiny)
	// Splice a 200 KiB IDAT chunk in after IHDR (8-byte signature, then
	// IHDR's 4+4+13+4 bytes).
	b := one.Bytes()
	at := 8 + 25
	chunk := binary.BigEndian.AppendUint32(nil, 200<<10)
	chunk = append(chunk, "IDAT"...)
	chunk = append(chunk, make([]byte, 200<<10+4)...) // data and a CRC
	bomb := append(append(append([]byte{}, b[:at]...), chunk...), b[at:]...)
	_, err := readHeader(bomb, 1000)
	var se *server.Error
	if !errors.As(err, &se) || se.Code != CodeBadImage {
		t.Fatalf("1×1 PNG with 200 KiB of image data: %v; want %s", err, CodeBadImage)
	}
	if len(se.Message) > 256 {
		t.Errorf("message of %d bytes", len(se.Message))
	}
}
