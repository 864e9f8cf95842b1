package handlers

import (
	"bytes"
	"errors"
)

// MaxJPEGScans bounds the scans (SOS segments) of a JPEG. A progressive
// decoder walks every block of a scan's components in every scan, whatever
// the scan holds, so a file of thousands of empty scans costs thousands of
// full passes over the image: measured, an empty refinement scan of a 49 MP
// grey image costs jpegn 25 ms, and a 25 MB file holds 2.5 million of them.
// Real encoders emit few: libjpeg's default progressive script has 10 scans
// (6 for grey), mozjpeg chooses its scans from 64 candidates, Photoshop's
// "progressive" 3 to 5, a baseline file 1 (up to 4 when not interleaved).
// libjpeg-turbo's own guard (TJFLAG_LIMITSCANS) allows 500, which at 50 MP
// would be 12 s of a core here. The count is a backstop: MaxJPEGScanPasses
// is the bound that follows the work.
const MaxJPEGScans = 64

// MaxJPEGScanPasses bounds the work of a JPEG's scans: the blocks each scan
// covers (the blocks of every component it lists, a component listed twice
// counted twice), summed over the scans, may be at most this many times the
// image's blocks. A scan costs the decoder about its blocks whatever it
// holds (an empty refinement scan 35 ns a block), so this is the number of
// full passes over the image a file may ask for. Real scripts ask for about
// 5 to 6: libjpeg's default (cjpeg -progressive, jpegtran -progressive) 5.3
// at 4:2:0, 4.7 at 4:4:4 and 6 for grey; mozjpeg's searched scripts and
// jpegli's at most about 6 (a DC scan and up to five AC scans of luma);
// baseline 1. At 10, the worst allowed 49 MP grey file (a DC scan and nine
// empty refinement scans) costs 0.35 s to thumbnail, near the 0.23 s of an
// honest progressive colour file of that size and far from the 1.8 s of the
// 63 scans the count alone allowed (BenchmarkImageLargestAllowed). A
// component's blocks count as often as a scan lists it.
const MaxJPEGScanPasses = 10

// jpegLayout is what one walk over a JPEG's markers finds, decoding nothing.
type jpegLayout struct {
	width, height int
	scans         int    // SOS segments before EOI, counted to one past the cap
	blocks        int64  // the frame's 8×8 blocks, all components, padded to whole MCUs
	scanBlocks    int64  // the blocks the counted scans cover, summed
	exif          []byte // the first APP1 Exif segment, marker included; nil if none
	comps         []jpegComponent
}

// jpegComponent is a frame component: its id and its blocks.
type jpegComponent struct {
	id     byte
	blocks int64
}

// passes is how many times over the counted scans cover the image's blocks.
func (l jpegLayout) passes() float64 {
	if l.blocks == 0 {
		return 0
	}
	return float64(l.scanBlocks) / float64(l.blocks)
}

// frameComponents returns a frame header's components with their blocks,
// padded to whole MCUs as jpegn allocates them (a grey image's one
// component is 1×1 whatever it declares, as in jpegn and libjpeg).
func frameComponents(seg []byte, w, h int) ([]jpegComponent, error) {
	n := int(seg[5])
	if len(seg) < 6+3*n {
		return nil, errors.New("short frame header")
	}
	hmax, vmax := 1, 1
	for i := range n {
		s := seg[7+3*i]
		hmax, vmax = max(hmax, int(s>>4)), max(vmax, int(s&15))
	}
	if n == 1 {
		hmax, vmax = 1, 1
	}
	mx, my := int64((w+8*hmax-1)/(8*hmax)), int64((h+8*vmax-1)/(8*vmax))
	comps := make([]jpegComponent, n)
	for i := range n {
		s := seg[7+3*i]
		hi, vi := int64(max(1, int(s>>4))), int64(max(1, int(s&15)))
		if n == 1 {
			hi, vi = 1, 1
		}
		comps[i] = jpegComponent{seg[6+3*i], mx * hi * my * vi}
	}
	return comps, nil
}

// scanBlocksOf is the blocks a scan header lists: those of each component
// it names, the largest component's for an id the frame lacks (the decoder
// refuses those; counting them high keeps the bound an upper one).
func (l jpegLayout) scanBlocksOf(seg []byte) int64 {
	if len(seg) < 1 {
		return 0
	}
	var most int64
	for _, c := range l.comps {
		most = max(most, c.blocks)
	}
	var sum int64
	for i := 0; i < int(seg[0]) && 1+2*i < len(seg); i++ {
		b := most
		for _, c := range l.comps {
			if c.id == seg[1+2*i] {
				b = c.blocks
				break
			}
		}
		sum += b
	}
	return sum
}

// walkJPEG reads a JPEG's marker segments and skips its entropy-coded data,
// once and in O(len(b)): the frame size and components, the scans (counted
// up to one past maxScans, then it stops) and the blocks they cover, the
// EXIF segment, and whether the image is whole (an end-of-image marker is
// reached: jpegn decodes a truncated scan into a partly grey image rather
// than fail).
//
// The walk mirrors how jpegn finds markers, so that every scan the decoder
// would run is counted: every marker but the standalone ones (RSTn, TEM,
// EOI) has a length, a segment is skipped by its length, 0xFF fill bytes
// precede a marker, and entropy-coded data ends at the first 0xFF followed
// by neither 0x00 (a stuffed byte) nor RSTn. Before the frame header a
// non-marker byte is an error; after it, stray bytes are skipped to the next
// 0xFF, as jpegn does (libjpeg warns "extraneous bytes before marker").
func walkJPEG(b []byte, maxScans int) (jpegLayout, error) {
	var l jpegLayout
	sof := false
	i := 2 // after SOI
	for {
		if i >= len(b) {
			return l, errors.New("no end-of-image marker: truncated")
		}
		if b[i] != 0xff {
			if !sof {
				return l, errors.New("bad marker")
			}
			k := bytes.IndexByte(b[i:], 0xff)
			if k < 0 {
				return l, errors.New("no end-of-image marker: truncated")
			}
			i += k
		}
		for i < len(b) && b[i] == 0xff { // the marker's 0xFF and any fill bytes
			i++
		}
		if i >= len(b) {
			return l, errors.New("no end-of-image marker: truncated")
		}
		m := b[i]
		i++
		switch {
		case m == 0xd9: // EOI: the decoder stops here, whatever follows
			if !sof {
				return l, errors.New("no frame header")
			}
			return l, nil
		case m >= 0xd0 && m <= 0xd7, m == 0x01: // RSTn, TEM: no length
			continue
		case m == 0x00:
			return l, errors.New("stuffed byte outside entropy-coded data")
		}
		if i+2 > len(b) {
			return l, errors.New("truncated marker segment")
		}
		n := int(b[i])<<8 | int(b[i+1])
		if n < 2 || i+n > len(b) {
			return l, errors.New("truncated marker segment")
		}
		seg := b[i+2 : i+n]
		switch {
		case m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc: // SOFn
			if !sof { // jpegn refuses or skips a second one
				if len(seg) < 6 {
					return l, errors.New("short frame header")
				}
				l.height = int(seg[1])<<8 | int(seg[2])
				l.width = int(seg[3])<<8 | int(seg[4])
				comps, err := frameComponents(seg, l.width, l.height)
				if err != nil {
					return l, err
				}
				l.comps = comps
				for _, c := range comps {
					l.blocks += c.blocks
				}
				sof = true
			}
		case m == 0xe1 && l.exif == nil && bytes.HasPrefix(seg, []byte("Exif\x00\x00")):
			l.exif = b[i-2 : i+n]
		case m == 0xda: // SOS: its header, then entropy-coded data
			if !sof {
				return l, errors.New("scan before the frame header")
			}
			l.scans++
			if l.scans > maxScans {
				return l, nil
			}
			l.scanBlocks += l.scanBlocksOf(seg)
			i = skipEntropy(b, i+n)
			continue
		}
		i += n
	}
}

// skipEntropy returns the index of the marker that ends the entropy-coded
// data starting at i (the 0xFF of it), or len(b).
func skipEntropy(b []byte, i int) int {
	for {
		k := bytes.IndexByte(b[i:], 0xff)
		if k < 0 {
			return len(b)
		}
		i += k
		if i+1 >= len(b) {
			return len(b)
		}
		if next := b[i+1]; next == 0x00 || next >= 0xd0 && next <= 0xd7 {
			i += 2 // a stuffed 0xFF, or a restart marker: the data goes on
			continue
		}
		return i
	}
}
