package handlers

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

// tiffOf is a w×h 8-bit grey TIFF cut into blocks: bw×bh tiles, or strips of
// bh rows when bw is 0. Deflated blocks when deflate is set, raw otherwise.
// When shared is set every block points at one block's data, as a hostile
// file's may: the table is then the file.
func tiffOf(w, h, bw, bh int, deflate, shared bool) []byte {
	across, down := 1, (h+bh-1)/bh
	blockW := w
	if bw > 0 {
		across, blockW = (w+bw-1)/bw, bw
	}
	n := across * down
	out := []byte("II*\x00\x00\x00\x00\x00") // the IFD offset is set below
	offsets, counts := make([]uint32, n), make([]uint32, n)
	raw := make([]byte, blockW*bh)
	var z bytes.Buffer
	for i := range n {
		if shared && i > 0 {
			offsets[i], counts[i] = offsets[0], counts[0]
			continue
		}
		x0, y0 := i%across*blockW, i/across*bh
		for y := range bh {
			for x := range blockW {
				raw[y*blockW+x] = byte((x0+x)*255/w ^ (y0+y)*255/h)
			}
		}
		data := raw
		if deflate {
			z.Reset()
			zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
			zw.Write(raw)
			zw.Close()
			data = z.Bytes()
		}
		offsets[i], counts[i] = uint32(len(out)), uint32(len(data))
		out = append(out, data...)
	}
	type entry struct {
		tag, typ uint16
		vals     []uint32
	}
	compression := uint32(1)
	if deflate {
		compression = 8
	}
	entries := []entry{
		{256, 4, []uint32{uint32(w)}},
		{257, 4, []uint32{uint32(h)}},
		{258, 3, []uint32{8}},
		{259, 3, []uint32{compression}},
		{262, 3, []uint32{1}}, // BlackIsZero
	}
	if bw > 0 {
		entries = append(entries, entry{277, 3, []uint32{1}},
			entry{322, 4, []uint32{uint32(bw)}}, entry{323, 4, []uint32{uint32(bh)}},
			entry{324, 4, offsets}, entry{325, 4, counts})
	} else {
		entries = append(entries, entry{273, 4, offsets}, entry{277, 3, []uint32{1}},
			entry{278, 4, []uint32{uint32(bh)}}, entry{279, 4, counts})
	}
	// Arrays of more than one LONG lie after the IFD.
	le := binary.LittleEndian
	if len(out)%2 == 1 {
		out = append(out, 0)
	}
	ifd := len(out)
	le.PutUint32(out[4:], uint32(ifd))
	extra := ifd + 2 + 12*len(entries) + 4
	out = le.AppendUint16(out, uint16(len(entries)))
	var tail []byte
	for _, e := range entries {
		out = le.AppendUint16(out, e.tag)
		out = le.AppendUint16(out, e.typ)
		out = le.AppendUint32(out, uint32(len(e.vals)))
		switch {
		case len(e.vals) > 1:
			out = le.AppendUint32(out, uint32(extra+len(tail)))
			for _, v := range e.vals {
				tail = le.AppendUint32(tail, v)
			}
		case e.typ == 3:
			out = le.AppendUint16(out, uint16(e.vals[0]))
			out = le.AppendUint16(out, 0)
		default:
			out = le.AppendUint32(out, e.vals[0])
		}
	}
	out = le.AppendUint32(out, 0) // no next IFD
	return append(out, tail...)
}

// A TIFF of more strips or tiles than MaxTIFFBlocks is refused from its
// header, cheaply; honest layouts and a file at the bound are decoded.
func TestTIFFBlockBombIsRefused(t *testing.T) {
	bomb := tiffOf(7000, 7000, 8, 8, true, true) // 765,625 tiles, 6 MB
	start := time.Now()
	for _, name := range []string{"image-info", "image-resize"} {
		if _, err := run(t, name, Params{"width": "400"}, bomb); !hasStatus(err, 422, CodeImageTooLarge) {
			t.Errorf("%s of 765,625 8×8 tiles = %v; want 422 image_too_large", name, err)
		}
	}
	if took := time.Since(start); took > 200*time.Millisecond {
		t.Errorf("refusing took %v; want a header's cost", took)
	}
	strips := tiffOf(16, MaxTIFFBlocks+1, 0, 1, false, true)
	if _, err := run(t, "image-info", Params{}, strips); !hasStatus(err, 422, CodeImageTooLarge) {
		t.Errorf("info of %d one-row strips = %v; want 422 image_too_large", MaxTIFFBlocks+1, err)
	}
	for _, tc := range []struct {
		name  string
		input []byte
	}{
		{"x/image's encoder (one strip)", encodeAs(t, "tiff", sampleimages.Photo(300, 200))},
		{"256² deflate tiles", tiffOf(600, 500, 256, 256, true, false)},
		{"one-row deflate strips", tiffOf(600, 500, 0, 1, true, false)},
		{"at the bound: 65,536 one-row strips", tiffOf(16, MaxTIFFBlocks, 0, 1, true, true)},
	} {
		if _, err := run(t, "image-resize", Params{"width": "50", "height": "50", "fit": "fill"}, tc.input); err != nil {
			t.Errorf("%s: %v; want decoded", tc.name, err)
		}
	}
}

// tiffBlocks counts what the offsets entries declare, in either byte order,
// and fails on an IFD that is not all there.
func TestTIFFBlocks(t *testing.T) {
	le := tiffOf(64, 48, 16, 16, false, false) // 4×3 tiles
	if n, err := tiffBlocks(le); n != 12 || err != nil {
		t.Errorf("tiffBlocks(4×3 tiles) = %d, %v; want 12", n, err)
	}
	be := []byte("MM\x00*\x00\x00\x00\x08\x00\x01\x01\x11\x00\x04\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00")
	be[14], be[15], be[16], be[17] = 0, 1, 0, 0 // StripOffsets, 65,536 of them
	if n, err := tiffBlocks(be); n != 65_536 || err != nil {
		t.Errorf("tiffBlocks(big-endian, 65,536 strips) = %d, %v; want 65536", n, err)
	}
	ifd := int(binary.LittleEndian.Uint32(le[4:]))
	for _, cut := range []int{0, 7, ifd + 1, ifd + 2 + 12*9 - 1} {
		if _, err := tiffBlocks(le[:cut]); err == nil {
			t.Errorf("tiffBlocks of the first %d bytes (IFD at %d): no error", cut, ifd)
		}
	}
}

// BenchmarkTIFFBlocks measures what a TIFF's blocks cost at the largest
// allowed size: an honest file's (tiles of 256², strips of one row, as
// libtiff writes a 7000-wide grey image) against the most blocks allowed.
// Before MaxTIFFBlocks, 765,625 deflated 8×8 tiles cost 4.3 s and 34 GB
// of allocation.
//
//	go test ./handlers -run '^$' -bench TIFFBlocks -benchtime=3x
func BenchmarkTIFFBlocks(b *testing.B) {
	for _, bc := range []struct {
		name            string
		bw, bh          int
		deflate, shared bool
	}{
		{"deflate-tiles-256", 256, 256, true, false},
		{"deflate-strips-1-row", 0, 1, true, false},
		{"raw-strips-1-row", 0, 1, false, false},
		// The worst allowed: 250×250 = 62,500 tiles at one tiny stream.
		{"deflate-tiles-28-shared", 28, 28, true, true},
		{"raw-tiles-28-shared", 28, 28, false, true},
	} {
		input := tiffOf(7000, 7000, bc.bw, bc.bh, bc.deflate, bc.shared)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportMetric(float64(len(input))/(1<<20), "MB")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := run(b, "image-resize", Params{"width": "400"}, input); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
