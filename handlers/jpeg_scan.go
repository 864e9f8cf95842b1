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
// would be 12 s of a core here; 64 leaves every known encoder room while
// bounding the worst to 1.9 s at 49 MP, against 0.1 to 0.5 s for an honest
// baseline image of that size (BenchmarkImageLargestAllowed). A budget
// weighing each scan by the blocks it covers would bound it closer.
const MaxJPEGScans = 64

// jpegLayout is what one walk over a JPEG's markers finds, decoding nothing.
type jpegLayout struct {
	width, height int
	scans         int    // SOS segments before EOI, counted to one past the cap
	exif          []byte // the first APP1 Exif segment, marker included; nil if none
}

// walkJPEG reads a JPEG's marker segments and skips its entropy-coded data,
// once and in O(len(b)): the frame size, the scans (counted up to one past
// maxScans, then it stops), the EXIF segment, and whether the image is whole
// (an end-of-image marker is reached: jpegn decodes a truncated scan into a
// partly grey image rather than fail).
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
