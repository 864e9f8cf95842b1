// Package jpegdc decodes a JPEG at 1/8 scale from its DC coefficients
// alone: what a thumbnail needs, at a fraction of a full decode's cost.
//
// At 1/8 scale each 8×8 block becomes one pixel, the block's average,
// which is its DC coefficient: libjpeg's 1/8 IDCT (jpeg_idct_1x1) computes
// it as ((DC·Q₀ + 4) >> 3) + 128, clamped, and so does Decode, byte for
// byte. A decoder at 1/8 must still entropy-decode every AC coefficient to
// find the next block's DC, and that is where a full decoder spends its
// time; Decode decodes each AC code and skips its value bits without
// reading them, stores nothing but one DC per block, and does no IDCT.
// For a progressive JPEG it reads only the DC scans: the AC scans' bytes
// are skipped unread, so a file of many AC scans costs no more than its
// size to walk past.
//
// Supported: 8-bit Huffman JPEGs, baseline, extended or progressive, grey
// or three components (YCbCr) sampled 4:4:4, 4:2:2, 4:2:0 or 4:4:0, with
// restart intervals. Anything else (CMYK, an Adobe RGB transform,
// arithmetic coding, 12-bit, lossless, other samplings) is ErrUnsupported,
// for the caller to decode another way; a file that is none of these is an
// error wrapping ErrCorrupt.
//
// The work is bounded by the input: every loop walks the blocks the frame
// declares, at most once per DC scan, and the caller bounds both (declared
// pixels, scan passes) before it calls Decode.
package jpegdc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"image"
)

var (
	// ErrUnsupported is a valid JPEG of a kind Decode leaves to another
	// decoder.
	ErrUnsupported = errors.New("jpegdc: unsupported JPEG")
	// ErrCorrupt is input that is no valid JPEG.
	ErrCorrupt = errors.New("jpegdc: corrupt JPEG")
)

// MaxScans bounds the scans Decode walks.
const MaxScans = 256

type component struct {
	id     byte
	h, v   int
	tq     int
	q0     int32 // the quantizer of DC, taken when the component's first scan starts
	qSet   bool
	bw, bh int     // blocks per row and rows, padded to whole MCUs
	rw, rh int     // blocks that hold image data: a non-interleaved scan's extent
	dc     []int32 // the DC coefficient of every block, bw × bh
	pred   int32
	td, ta int
}

type huff struct {
	lut     [1 << lookBits]uint16 // code of ≤ lookBits bits: length<<8 | symbol; 0: longer
	maxcode [18]int32             // per length: the largest code, -1 for none
	valptr  [17]int32
	mincode [17]int32
	vals    [256]byte
	set     bool
}

const lookBits = 9

type decoder struct {
	data        []byte
	w, h        int
	progressive bool
	comps       []component
	hmax, vmax  int
	mcux, mcuy  int
	q           [4][64]uint16
	qset        [4]bool
	dc, ac      [4]huff
	restart     int
	frame       bool
	adobe       int // the Adobe APP14 transform, -1 if none

	// The entropy-coded segment's bit reader.
	pos  int
	acc  uint64 // bits, most significant first
	n    uint   // bits in acc
	mark bool   // a marker ended the segment: zeros are fed
}

// Decode decodes data at 1/8 scale: an *image.Gray for a grey JPEG, an
// *image.YCbCr for a colour one, of ⌈w/8⌉ × ⌈h/8⌉ pixels, not rotated.
func Decode(data []byte) (image.Image, error) {
	d := &decoder{data: data, adobe: -1}
	if err := d.decode(); err != nil {
		return nil, err
	}
	return d.image()
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...)
}

func (d *decoder) decode() error {
	data := d.data
	if len(data) < 4 || data[0] != 0xFF || data[1] != 0xD8 {
		return corrupt("no SOI")
	}
	pos, scans := 2, 0
	for {
		// A marker: 0xFF, any fill 0xFFs, then its code.
		for pos < len(data) && data[pos] != 0xFF {
			pos++ // tolerate junk between segments, as libjpeg does (with a warning)
		}
		for pos < len(data) && data[pos] == 0xFF {
			pos++
		}
		if pos >= len(data) {
			if scans > 0 {
				return nil // a truncated file: what was decoded stands, as in libjpeg
			}
			return corrupt("no scan")
		}
		m := data[pos]
		pos++
		switch {
		case m == 0xD9: // EOI
			if scans == 0 {
				return corrupt("no scan")
			}
			return nil
		case m >= 0xD0 && m <= 0xD7, m == 0x01, m == 0xD8:
			continue // standalone
		}
		if pos+2 > len(data) {
			return corrupt("truncated segment")
		}
		n := int(binary.BigEndian.Uint16(data[pos:]))
		if n < 2 || pos+n > len(data) {
			return corrupt("segment length %d", n)
		}
		seg := data[pos+2 : pos+n]
		pos += n
		var err error
		switch {
		case m == 0xC0 || m == 0xC1 || m == 0xC2:
			err = d.sof(seg, m == 0xC2)
		case m >= 0xC3 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC:
			err = fmt.Errorf("%w: SOF%d (lossless, hierarchical or arithmetic)", ErrUnsupported, m-0xC0)
		case m == 0xC4:
			err = d.dht(seg)
		case m == 0xCC:
			err = fmt.Errorf("%w: arithmetic coding", ErrUnsupported)
		case m == 0xDB:
			err = d.dqt(seg)
		case m == 0xDD:
			if len(seg) < 2 {
				return corrupt("DRI")
			}
			d.restart = int(binary.BigEndian.Uint16(seg))
		case m == 0xEE:
			if len(seg) >= 12 && string(seg[:5]) == "Adobe" {
				d.adobe = int(seg[11])
			}
		case m == 0xDA:
			if scans++; scans > MaxScans {
				return corrupt("over %d scans", MaxScans)
			}
			pos, err = d.sos(seg, pos)
		}
		if err != nil {
			return err
		}
	}
}

func (d *decoder) sof(seg []byte, progressive bool) error {
	if d.frame {
		return corrupt("two frames")
	}
	if len(seg) < 6 {
		return corrupt("SOF")
	}
	if seg[0] != 8 {
		return fmt.Errorf("%w: %d-bit samples", ErrUnsupported, seg[0])
	}
	d.h, d.w = int(binary.BigEndian.Uint16(seg[1:])), int(binary.BigEndian.Uint16(seg[3:]))
	nc := int(seg[5])
	if d.w == 0 || d.h == 0 {
		return corrupt("a zero side (DNL is not supported)")
	}
	if nc != 1 && nc != 3 {
		return fmt.Errorf("%w: %d components", ErrUnsupported, nc)
	}
	if len(seg) < 6+3*nc {
		return corrupt("SOF")
	}
	d.frame, d.progressive = true, progressive
	d.comps = make([]component, nc)
	d.hmax, d.vmax = 1, 1
	for i := range d.comps {
		c := &d.comps[i]
		b := seg[6+3*i:]
		c.id, c.h, c.v, c.tq = b[0], int(b[1]>>4), int(b[1]&15), int(b[2])
		if c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 || c.tq > 3 {
			return corrupt("component sampling or table")
		}
		if nc == 1 {
			c.h, c.v = 1, 1 // a grey image's one component is 1×1, whatever it says
		}
		d.hmax, d.vmax = max(d.hmax, c.h), max(d.vmax, c.v)
	}
	if nc == 3 {
		for i := range d.comps {
			c := d.comps[i]
			if i > 0 && (c.h != 1 || c.v != 1) {
				return fmt.Errorf("%w: chroma sampled %d×%d", ErrUnsupported, c.h, c.v)
			}
		}
		if y := d.comps[0]; y.h > 2 || y.v > 2 {
			return fmt.Errorf("%w: luma sampled %d×%d", ErrUnsupported, y.h, y.v)
		}
		if d.adobe == 0 {
			return fmt.Errorf("%w: RGB (Adobe transform 0)", ErrUnsupported)
		}
	}
	d.mcux = (d.w + 8*d.hmax - 1) / (8 * d.hmax)
	d.mcuy = (d.h + 8*d.vmax - 1) / (8 * d.vmax)
	for i := range d.comps {
		c := &d.comps[i]
		c.bw, c.bh = d.mcux*c.h, d.mcuy*c.v
		c.rw = ((d.w*c.h+d.hmax-1)/d.hmax + 7) / 8
		c.rh = ((d.h*c.v+d.vmax-1)/d.vmax + 7) / 8
		c.dc = make([]int32, c.bw*c.bh)
	}
	return nil
}

func (d *decoder) dqt(seg []byte) error {
	for len(seg) > 0 {
		pq, tq := seg[0]>>4, int(seg[0]&15)
		if tq > 3 || pq > 1 {
			return corrupt("DQT")
		}
		n := 64 * (1 + int(pq))
		if len(seg) < 1+n {
			return corrupt("DQT")
		}
		for i := range 64 {
			if pq == 0 {
				d.q[tq][i] = uint16(seg[1+i])
			} else {
				d.q[tq][i] = binary.BigEndian.Uint16(seg[1+2*i:])
			}
		}
		d.qset[tq] = true
		seg = seg[1+n:]
	}
	return nil
}

func (d *decoder) dht(seg []byte) error {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return corrupt("DHT")
		}
		tc, th := seg[0]>>4, int(seg[0]&15)
		if tc > 1 || th > 3 {
			return corrupt("DHT class or id")
		}
		var counts [17]int
		total := 0
		for l := 1; l <= 16; l++ {
			counts[l] = int(seg[l])
			total += counts[l]
		}
		if total > 256 || len(seg) < 17+total {
			return corrupt("DHT")
		}
		t := &d.dc[th]
		if tc == 1 {
			t = &d.ac[th]
		}
		*t = huff{set: true}
		copy(t.vals[:], seg[17:17+total])
		code, k := int32(0), int32(0)
		for l := 1; l <= 16; l++ {
			t.valptr[l] = k
			t.mincode[l] = code
			code += int32(counts[l])
			k += int32(counts[l])
			if counts[l] > 0 {
				t.maxcode[l] = code - 1
			} else {
				t.maxcode[l] = -1
			}
			if code > 1<<l {
				return corrupt("DHT: over-subscribed")
			}
			code <<= 1
		}
		t.maxcode[17] = 1<<31 - 1 // a sentinel: the slow path stops at 16
		// The lookahead table: every code of ≤ lookBits bits, padded with
		// every suffix.
		code, k = 0, 0
		for l := 1; l <= lookBits; l++ {
			for range counts[l] {
				base := code << (lookBits - l)
				for s := int32(0); s < 1<<(lookBits-l); s++ {
					t.lut[base+s] = uint16(l)<<8 | uint16(t.vals[k])
				}
				code++
				k++
			}
			code <<= 1
		}
		seg = seg[17+total:]
	}
	return nil
}
