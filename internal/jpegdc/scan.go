package jpegdc

import (
	"bytes"
	"image"
)

// sos decodes one scan's entropy-coded data, which starts at pos, and
// returns the position of the marker that ends it.
func (d *decoder) sos(seg []byte, pos int) (int, error) {
	if !d.frame {
		return 0, corrupt("SOS before SOF")
	}
	if len(seg) < 1 {
		return 0, corrupt("SOS")
	}
	ns := int(seg[0])
	if ns < 1 || ns > len(d.comps) || len(seg) < 4+2*ns {
		return 0, corrupt("SOS")
	}
	var sc [3]*component
	for i := range ns {
		id, t := seg[1+2*i], seg[2+2*i]
		for j := range d.comps {
			if d.comps[j].id == id {
				sc[i] = &d.comps[j]
			}
		}
		if sc[i] == nil {
			return 0, corrupt("SOS names component %d, not in the frame", id)
		}
		sc[i].td, sc[i].ta = int(t>>4), int(t&15)
		if sc[i].td > 3 || sc[i].ta > 3 {
			return 0, corrupt("SOS table")
		}
	}
	ss, se, ah, al := seg[1+2*ns], seg[2+2*ns], seg[3+2*ns]>>4, uint(seg[3+2*ns]&15)
	if d.progressive && ss > 0 {
		// An AC scan: a 1/8 image needs none of it.
		return d.skipEntropy(pos), nil
	}
	if d.progressive && se != 0 || al > 13 {
		return 0, corrupt("scan spectral selection")
	}
	refine := d.progressive && ah > 0
	for _, c := range sc[:ns] {
		if !c.qSet {
			if !d.qset[c.tq] {
				return 0, corrupt("no quantization table %d", c.tq)
			}
			c.q0, c.qSet = int32(d.q[c.tq][0]), true
		}
		if !refine && !d.dc[c.td].set || !d.progressive && !d.ac[c.ta].set {
			return 0, corrupt("no Huffman table")
		}
		c.pred = 0
	}
	d.pos, d.acc, d.n, d.mark = pos, 0, 0, false

	left := d.restart // MCUs until the next restart marker
	mcu := func() error {
		if d.restart == 0 {
			return nil
		}
		if left == 0 {
			d.restartMarker()
			for _, c := range sc[:ns] {
				c.pred = 0
			}
			left = d.restart
		}
		left--
		return nil
	}
	if ns == 1 {
		// Not interleaved: the component's own blocks, in raster order,
		// each an MCU.
		c := sc[0]
		for by := range c.rh {
			for bx := range c.rw {
				mcu()
				if err := d.block(c, by*c.bw+bx, refine, al); err != nil {
					return 0, err
				}
			}
		}
	} else {
		for my := range d.mcuy {
			for mx := range d.mcux {
				mcu()
				for _, c := range sc[:ns] {
					for v := range c.v {
						row := (my*c.v + v) * c.bw
						for h := range c.h {
							if err := d.block(c, row+mx*c.h+h, refine, al); err != nil {
								return 0, err
							}
						}
					}
				}
			}
		}
	}
	return d.skipEntropy(d.pos), nil
}

// block decodes one block: its DC (or, refining, one more bit of it) and,
// in a baseline scan, walks past its AC coefficients.
func (d *decoder) block(c *component, i int, refine bool, al uint) error {
	if d.n < 32 {
		d.fill()
	}
	if refine {
		if d.acc>>63 != 0 {
			c.dc[i] |= 1 << al
		}
		d.acc <<= 1
		d.n--
		return nil
	}
	s, err := d.huff(&d.dc[c.td])
	if err != nil {
		return err
	}
	if s > 15 {
		return corrupt("DC magnitude %d", s)
	}
	if s > 0 {
		v := int32(d.acc >> (64 - uint(s)))
		d.acc <<= s
		d.n -= uint(s)
		if v < 1<<(s-1) {
			v += -1<<s + 1
		}
		c.pred += v
	}
	c.dc[i] = c.pred << al
	if d.progressive {
		return nil
	}
	ac := &d.ac[c.ta]
	for k := 1; k < 64; {
		if d.n < 32 {
			d.fill()
		}
		rs, err := d.huff(ac)
		if err != nil {
			return err
		}
		r, s := int(rs>>4), uint(rs&15)
		if s == 0 {
			if r != 15 {
				break // EOB
			}
			k += 16
			continue
		}
		k += r + 1
		d.acc <<= s // the value's bits, never read
		d.n -= s
	}
	return nil
}

// huff decodes one Huffman symbol; the caller has filled at least 16 bits.
func (d *decoder) huff(t *huff) (byte, error) {
	if e := t.lut[d.acc>>(64-lookBits)]; e != 0 {
		l := uint(e >> 8)
		d.acc <<= l
		d.n -= l
		return byte(e), nil
	}
	code := int32(d.acc >> 48)
	for l := lookBits + 1; l <= 16; l++ {
		if c := code >> (16 - l); c <= t.maxcode[l] {
			d.acc <<= uint(l)
			d.n -= uint(l)
			return t.vals[(t.valptr[l]+c-t.mincode[l])&255], nil
		}
	}
	return 0, corrupt("a Huffman code no table holds")
}

// fill tops the bit buffer up to more than 56 bits, undoing byte stuffing;
// at a marker (or the input's end) it feeds zeros, as libjpeg does.
func (d *decoder) fill() {
	data := d.data
	for d.n <= 56 {
		var b byte
		if !d.mark && d.pos < len(data) {
			b = data[d.pos]
			if b != 0xFF {
				d.pos++
			} else if d.pos+1 < len(data) && data[d.pos+1] == 0 {
				d.pos += 2
			} else {
				d.mark, b = true, 0
			}
		}
		d.acc |= uint64(b) << (56 - d.n)
		d.n += 8
	}
}

// restartMarker drops the bits left before a restart marker and steps over
// it. A missing marker is tolerated: the next interval decodes from here.
func (d *decoder) restartMarker() {
	d.acc, d.n, d.mark = 0, 0, false
	p := d.pos
	for p < len(d.data) && d.data[p] == 0xFF && p+1 < len(d.data) && d.data[p+1] == 0xFF {
		p++
	}
	if p+1 < len(d.data) && d.data[p] == 0xFF && d.data[p+1] >= 0xD0 && d.data[p+1] <= 0xD7 {
		d.pos = p + 2
	}
}

// skipEntropy returns the position of the marker that ends the
// entropy-coded data at pos: an 0xFF followed by neither 0 (stuffing) nor a
// restart marker.
func (d *decoder) skipEntropy(pos int) int {
	data := d.data
	for pos < len(data) {
		i := bytes.IndexByte(data[pos:], 0xFF)
		if i < 0 || pos+i+1 >= len(data) {
			return len(data)
		}
		pos += i
		switch nx := data[pos+1]; {
		case nx == 0 || nx >= 0xD0 && nx <= 0xD7:
			pos += 2
		case nx == 0xFF:
			pos++
		default:
			return pos
		}
	}
	return len(data)
}

// image builds the 1/8 image: each block's ((DC·Q₀ + 4) >> 3) + 128,
// clamped, as libjpeg's jpeg_idct_1x1.
func (d *decoder) image() (image.Image, error) {
	for _, c := range d.comps {
		if !c.qSet {
			return nil, corrupt("a component no scan holds")
		}
	}
	w8, h8 := (d.w+7)/8, (d.h+7)/8
	planes := make([][]byte, len(d.comps))
	for i, c := range d.comps {
		p := make([]byte, len(c.dc))
		for j, v := range c.dc {
			x := ((int64(v)*int64(c.q0) + 4) >> 3) + 128
			p[j] = byte(min(max(x, 0), 255))
		}
		planes[i] = p
	}
	r := image.Rect(0, 0, w8, h8)
	if len(d.comps) == 1 {
		return &image.Gray{Pix: planes[0], Stride: d.comps[0].bw, Rect: r}, nil
	}
	var ratio image.YCbCrSubsampleRatio
	switch y := d.comps[0]; {
	case y.h == 1 && y.v == 1:
		ratio = image.YCbCrSubsampleRatio444
	case y.h == 2 && y.v == 1:
		ratio = image.YCbCrSubsampleRatio422
	case y.h == 2 && y.v == 2:
		ratio = image.YCbCrSubsampleRatio420
	case y.h == 1 && y.v == 2:
		ratio = image.YCbCrSubsampleRatio440
	default:
		return nil, ErrUnsupported
	}
	return &image.YCbCr{Y: planes[0], Cb: planes[1], Cr: planes[2], YStride: d.comps[0].bw, CStride: d.comps[1].bw,
		SubsampleRatio: ratio, Rect: r}, nil
}
