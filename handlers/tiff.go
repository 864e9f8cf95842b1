package handlers

import (
	"encoding/binary"
	"errors"
)

// MaxTIFFBlocks bounds the strips or tiles of a TIFF's first image, the only
// one decoded. x/image/tiff decodes block by block and pays per block
// whatever the block holds: a deflated one builds a new zlib reader (about
// 45 KB and 5 µs here), so a 7000×7000 file of 8×8 tiles all pointing at one
// tiny deflate stream (765,625 tiles, a 6 MB table) cost 4.3 s and 34 GB of
// allocation against 0.6 s for an honest file of that size
// (BenchmarkTIFFBlocks). Honest files have far fewer: libtiff writes strips
// of about 8 KB (at most 49,000 for 50 MP of 16-bit RGBA), tiled files use
// 256² or larger tiles (784 at 49 MP), and one-row strips stay under the
// bound up to 65,536 rows, JPEG's largest side. At the bound the blocks add
// at most about 0.3 s to an honest file's cost.
const MaxTIFFBlocks = 65_536

// tiffBlocks returns an upper bound on the blocks x/image/tiff decodes in a
// TIFF's first image: the largest count any StripOffsets or TileOffsets
// entry of the first IFD declares. The decoder refuses a file whose offsets
// table holds fewer values than its blocks ("inconsistent header") and
// reads no more values than the entry's count, so it decodes no more blocks
// than this, whichever of the tags it uses (it reads tiles when TileWidth is
// set, strips otherwise, and the last of repeated tags). Nothing else of the
// IFD needs parsing for the bound, so nothing else can disagree with the
// decoder.
func tiffBlocks(b []byte) (int, error) {
	if len(b) < 8 {
		return 0, errors.New("short header")
	}
	var order binary.ByteOrder = binary.LittleEndian
	if b[0] == 'M' {
		order = binary.BigEndian
	}
	off := int64(order.Uint32(b[4:8]))
	if off+2 > int64(len(b)) {
		return 0, errors.New("first IFD past the end")
	}
	n := int64(order.Uint16(b[off:]))
	entries := off + 2
	if entries+12*n > int64(len(b)) {
		return 0, errors.New("first IFD runs past the end")
	}
	blocks := 0
	for i := range n {
		e := b[entries+12*i:]
		switch order.Uint16(e) {
		case 273, 324: // StripOffsets, TileOffsets
			blocks = max(blocks, int(order.Uint32(e[4:8])))
		}
	}
	return blocks, nil
}

// tiffBytesPerPixel is what x/image/tiff's decoder holds per pixel of a
// TIFF's first image, from its first IFD: 16 bits per sample decode to
// Gray16 (grey) or RGBA64/NRGBA64 (colour, 8 bytes); 8 bits or fewer to
// Gray or Paletted (1 byte) or RGBA/NRGBA (4). 4 when the IFD cannot say.
func tiffBytesPerPixel(b []byte) int {
	if len(b) < 8 {
		return 4
	}
	var order binary.ByteOrder = binary.LittleEndian
	if b[0] == 'M' {
		order = binary.BigEndian
	}
	off := int64(order.Uint32(b[4:8]))
	if off+2 > int64(len(b)) {
		return 4
	}
	n := int64(order.Uint16(b[off:]))
	entries := off + 2
	if entries+12*n > int64(len(b)) {
		return 4
	}
	bits, photometric := 1, -1
	for i := range n {
		e := b[entries+12*i:]
		switch order.Uint16(e) {
		case 258: // BitsPerSample, SHORTs: the decoder reads the first
			v := e[8:10]
			if count := order.Uint32(e[4:8]); count > 2 {
				at := int64(order.Uint32(e[8:12]))
				if at < 0 || at+2 > int64(len(b)) {
					return 4
				}
				v = b[at : at+2]
			}
			bits = int(order.Uint16(v))
		case 262: // PhotometricInterpretation
			photometric = int(order.Uint16(e[8:10]))
		}
	}
	grey := photometric == 0 || photometric == 1 || photometric == 3 // or paletted
	switch {
	case bits > 8 && grey:
		return 2
	case bits > 8:
		return 8
	case grey:
		return 1
	}
	return 4
}
