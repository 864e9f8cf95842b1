package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math"
	"strconv"
	"time"

	"github.com/HugoSmits86/nativewebp"
	"github.com/gen2brain/jpegn"
	"github.com/hybrid-server/hybrid/internal/jpegdc"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
	"golang.org/x/image/bmp"
	"golang.org/x/image/draw"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// Image bounds, unless the server passes others (--image-max-pixels,
// --image-max-output, --image-max-frames).
const (
	DefaultMaxPixels       = 50_000_000 // declared width × height × frames, like imgproxy
	DefaultMaxOutputPixels = 50_000_000
	DefaultMaxFrames       = 1000
)

// Error codes of the image workloads.
const (
	CodeUnsupportedFormat = "unsupported_format" // 415
	CodeBadImage          = "bad_image"          // 422
	CodeImageTooLarge     = "image_too_large"    // 422
)

// Pipeline, chosen by measurement (bench/RESULTS.md): JPEG is
// decoded by github.com/gen2brain/jpegn, at 1/2, 1/4 or 1/8 scale in the IDCT
// when the output is that much smaller (about 2× faster than decoding full
// size, and memory follows the output), with EXIF orientation applied; PNG
// and GIF by the standard library; WebP, BMP and TIFF by golang.org/x/image.
// Resampling is Catmull-Rom (x/image/draw): no nearest-neighbour or plain
// bilinear at large ratios, so a 12 MP photo makes a 400 px thumbnail without
// aliasing; a source with many more rows than its output needs has them
// box-averaged first when the resampler's scratch would pass its budget
// (plan), and one of the output's size is drawn, not resampled. WebP
// output is lossless (github.com/HugoSmits86/nativewebp, pure
// Go; quality is ignored).
func init() {
	Register(&Workload{Name: "image-resize", Cacheable: true, Estimate: 150 * time.Millisecond, Group: "image", BigHeap: true, CheckParams: checkResizeParams, Check: checkResize, Run: runResize,
		ContentTypeOf: func(p Params) string { return "image/" + outputFormat(p) }})
	Register(&Workload{Name: "image-info", Estimate: time.Millisecond, Group: "image-info", MaxReply: 4 << 10, Check: checkInfo, Run: runInfo,
		ContentType: "application/json"})
}

// sniff names the format from the first bytes; "" if unknown.
func sniff(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}):
		return "jpeg"
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return "png"
	case bytes.HasPrefix(b, []byte("GIF87a")), bytes.HasPrefix(b, []byte("GIF89a")):
		return "gif"
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return "webp"
	case bytes.HasPrefix(b, []byte("BM")):
		return "bmp"
	case bytes.HasPrefix(b, []byte("II*\x00")), bytes.HasPrefix(b, []byte("MM\x00*")):
		return "tiff"
	}
	return ""
}

// header is what an image declares before any pixel is decoded.
type imageHeader struct {
	Format      string `json:"format"`
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	Frames      int    `json:"frames"`
	Orientation int    `json:"orientation"`
	// bytesPerPixel is what the decoder's image type holds per pixel (a
	// 16-bit RGBA PNG decodes to image.NRGBA64, 8 bytes), times 2 for an
	// interlaced PNG, whose Adam7 passes are images of their own beside
	// the full one.
	bytesPerPixel int
}

// imageLimits are the server's bounds on an image (--image-max-pixels,
// --image-max-output, --image-max-frames). The Executor sets them in the
// params of every image request (a client cannot: the routes take only the
// keys they name), as decimal strings so that they cross into an isolated
// child with the rest; they are parsed once, here, and a malformed one is
// an error, never a silent default.
type imageLimits struct {
	pixels, output, frames int
}

func parseImageLimits(p Params) (imageLimits, error) {
	l := imageLimits{DefaultMaxPixels, DefaultMaxOutputPixels, DefaultMaxFrames}
	for _, f := range []struct {
		key string
		v   *int
	}{{"max_pixels", &l.pixels}, {"max_output_pixels", &l.output}, {"max_frames", &l.frames}} {
		s, ok := p[f.key]
		if !ok {
			continue // a caller without server bounds (tests): the defaults
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return l, server.Errorf(fasthttp.StatusInternalServerError, server.CodeInternal, "image limit %s=%s is not a positive integer", f.key, server.Quote(s))
		}
		*f.v = n
	}
	return l, nil
}

// readHeader reads an image's header: its format, size, orientation, and
// frames (GIF), counted up to one past maxFrames and refused beyond it.
func readHeader(input []byte, maxFrames int) (imageHeader, error) {
	h := imageHeader{Format: sniff(input), Frames: 1, Orientation: 1, bytesPerPixel: 4}
	if h.Format == "" {
		if len(input) == 0 {
			return h, server.Errorf(fasthttp.StatusUnsupportedMediaType, CodeUnsupportedFormat, "empty body: want an image")
		}
		return h, server.Errorf(fasthttp.StatusUnsupportedMediaType, CodeUnsupportedFormat,
			"unknown image format; supported: jpeg, png, gif, webp, bmp, tiff")
	}
	var cfg image.Config
	var err error
	r := bytes.NewReader(input)
	switch h.Format {
	case "jpeg":
		var l jpegLayout
		l, err = walkJPEG(input, MaxJPEGScans)
		if err == nil && l.scans > MaxJPEGScans {
			return h, unprocessable(CodeImageTooLarge, "jpeg has more than %d scans, the limit", MaxJPEGScans)
		}
		if err == nil && l.scanBlocks > MaxJPEGScanPasses*l.blocks {
			return h, unprocessable(CodeImageTooLarge, "jpeg's scans pass over its blocks %.1f times; the limit is %d",
				l.passes(), MaxJPEGScanPasses)
		}
		cfg = image.Config{Width: l.width, Height: l.height}
		if err == nil && l.exif != nil {
			// Only the EXIF segment is handed over: DecodeExif copies all it reads.
			ex, xerr := jpegn.DecodeExif(bytes.NewReader(append([]byte{0xff, 0xd8}, l.exif...)))
			if xerr == nil && ex.Orientation >= 1 && ex.Orientation <= 8 {
				h.Orientation = ex.Orientation
			}
		}
	case "png":
		cfg, err = png.DecodeConfig(r)
		if err == nil {
			h.bytesPerPixel = pngBytesPerPixel(input)
			if data, need, bad := pngDataTooLarge(input, cfg.Width, cfg.Height); bad {
				return h, unprocessable(CodeBadImage, "png's image data is %d bytes, more than its %d×%d pixels need (%d)",
					data, cfg.Width, cfg.Height, need)
			}
		}
	case "gif":
		cfg, err = gif.DecodeConfig(r)
		h.bytesPerPixel = 1 // image.Paletted
		if err == nil {
			h.Frames, err = gifFrames(input, maxFrames+1)
			if err == nil && h.Frames > maxFrames {
				return h, unprocessable(CodeImageTooLarge, "gif has more than %d frames, the limit", maxFrames)
			}
		}
	case "webp":
		cfg, err = webp.DecodeConfig(r)
	case "bmp":
		cfg, err = bmp.DecodeConfig(r)
	case "tiff":
		cfg, err = tiff.DecodeConfig(r)
		if err == nil {
			var blocks int
			blocks, err = tiffBlocks(input)
			if err == nil && blocks > MaxTIFFBlocks {
				return h, unprocessable(CodeImageTooLarge, "tiff has %d strips or tiles; the limit is %d", blocks, MaxTIFFBlocks)
			}
			h.bytesPerPixel = tiffBytesPerPixel(input)
		}
	}
	if err != nil {
		return h, unprocessable(CodeBadImage, "corrupt or truncated %s header: %v", h.Format, err)
	}
	h.Width, h.Height = cfg.Width, cfg.Height
	if h.Width <= 0 || h.Height <= 0 {
		return h, unprocessable(CodeBadImage, "%s declares %d×%d pixels", h.Format, h.Width, h.Height)
	}
	return h, nil
}

// gifFrames counts a GIF's frames by walking its blocks, without decoding
// any; it stops counting at limit.
func gifFrames(b []byte, limit int) (int, error) {
	if len(b) < 13 {
		return 0, errors.New("short header")
	}
	i := 13
	if b[10]&0x80 != 0 { // global colour table
		i += 3 << (b[10]&7 + 1)
	}
	frames := 0
	skipSub := func() bool {
		for i < len(b) {
			n := int(b[i])
			i++
			if n == 0 {
				return true
			}
			i += n
		}
		return false
	}
	for i < len(b) && frames < limit {
		switch b[i] {
		case 0x3b: // trailer
			return max(frames, 1), nil
		case 0x21: // extension
			i += 2
			if !skipSub() {
				return max(frames, 1), nil
			}
		case 0x2c: // image descriptor
			if i+10 > len(b) {
				return max(frames, 1), nil
			}
			packed := b[i+9]
			i += 10
			if packed&0x80 != 0 {
				i += 3 << (packed&7 + 1)
			}
			i++ // LZW minimum code size
			frames++
			if !skipSub() {
				return frames, nil
			}
		default:
			return max(frames, 1), nil
		}
	}
	return max(frames, 1), nil
}

func checkInfo(p Params, input []byte) error {
	l, err := parseImageLimits(p)
	if err != nil {
		return err
	}
	_, err = readHeader(input, l.frames)
	return err
}

// runInfo answers from the header alone: cheap, and safe to run inline.
func runInfo(_ context.Context, p Params, input []byte) ([]byte, error) {
	l, err := parseImageLimits(p)
	if err != nil {
		return nil, err
	}
	h, err := readHeader(input, l.frames)
	if err != nil {
		return nil, err
	}
	return json.Marshal(h)
}

// resizeReq is a validated resize request.
type resizeReq struct {
	width, height int
	fit, format   string
	quality       int
	allFrames     bool
	enlarge       bool // enlarge=true: scale up past the source's size
	// gravity places the scaled image in the box: what cover crops and
	// where contain pads. x and y are 0 (left, top), 0.5 or 1 (right,
	// bottom); smart picks the crop with the most detail.
	gravityX, gravityY float64
	smart              bool
	// background is what transparent pixels are flattened onto: the
	// background= param, or white for JPEG (which has no alpha); a zero
	// alpha leaves them transparent.
	background color.RGBA
	maxPixels  int
	maxOut     int
	maxFrames  int
}

func outputFormat(p Params) string {
	if f := p["format"]; f != "" {
		return f
	}
	return "jpeg"
}

func parseResize(p Params) (resizeReq, error) {
	var r resizeReq
	var err error
	if r.width, err = intParam(p, "width", 0, 0, 1<<16); err != nil {
		return r, err
	}
	if r.height, err = intParam(p, "height", 0, 0, 1<<16); err != nil {
		return r, err
	}
	if r.width == 0 && r.height == 0 {
		return r, badParam("width or height: give at least one, in pixels (1 to 65536)")
	}
	if v := p["dpr"]; v != "" {
		// A device pixel ratio multiplies the size asked for (imgproxy's
		// dpr): width=200&dpr=2 is 400 pixels wide.
		dpr, err := strconv.ParseFloat(v, 64)
		if err != nil || !(dpr >= 1 && dpr <= 8) {
			return r, badParam("dpr=%s: want a number from 1 to 8", server.Quote(v))
		}
		r.width, r.height = int(float64(r.width)*dpr+0.5), int(float64(r.height)*dpr+0.5)
		if r.width > 1<<16 || r.height > 1<<16 {
			return r, badParam("width and height × dpr: at most 65536 pixels")
		}
	}
	r.fit = p["fit"]
	switch r.fit {
	case "":
		r.fit = "inside"
	case "inside", "cover", "fill", "contain":
	default:
		return r, badParam("fit=%s: want inside, cover, fill or contain", server.Quote(r.fit))
	}
	r.format = outputFormat(p)
	switch r.format {
	case "jpeg", "png", "gif", "webp":
	default:
		return r, badParam("format=%s: want jpeg, png, gif or webp", server.Quote(r.format))
	}
	if r.quality, err = intParam(p, "quality", 82, 1, 100); err != nil {
		return r, err
	}
	switch v := p["background"]; {
	case v != "":
		rgb, err := strconv.ParseUint(v, 16, 32)
		if err != nil || len(v) != 6 {
			return r, badParam("background=%s: want a colour as six hex digits, RRGGBB", server.Quote(v))
		}
		r.background = color.RGBA{uint8(rgb >> 16), uint8(rgb >> 8), uint8(rgb), 255}
	case r.format == "jpeg":
		r.background = color.RGBA{255, 255, 255, 255}
	}
	if g := p["gravity"]; g != "" {
		pos, ok := gravities[g]
		if !ok {
			return r, badParam("gravity=%s: want centre, north, south, east, west, north-east, north-west, south-east, south-west or smart (or imgproxy's ce, no, so, ea, we, noea, nowe, soea, sowe, sm)", server.Quote(g))
		}
		r.gravityX, r.gravityY, r.smart = pos[0], pos[1], g == "smart" || g == "sm"
	} else {
		r.gravityX, r.gravityY = 0.5, 0.5
	}
	switch p["enlarge"] {
	case "", "false":
	case "true":
		r.enlarge = true
	default:
		return r, badParam("enlarge=%s: want true or false", server.Quote(p["enlarge"]))
	}
	switch p["frames"] {
	case "", "first":
	case "all":
		if r.format != "gif" {
			return r, badParam("frames=all: animated output needs format=gif")
		}
		r.allFrames = true
	default:
		return r, badParam("frames=%s: want first or all", server.Quote(p["frames"]))
	}
	l, err := parseImageLimits(p)
	if err != nil {
		return r, err
	}
	r.maxPixels, r.maxOut, r.maxFrames = l.pixels, l.output, l.frames
	return r, nil
}

// MaxDecodedBytesPerPixel bounds the memory a decoded image may take, per
// pixel of --image-max-pixels: the pixel budget is sized for 8-bit RGBA (4
// bytes), and a 16-bit or interlaced PNG of the same declared pixels takes
// 2 to 4 times that (a 7000×7000 interlaced 16-bit RGBA PNG of 407 KB
// peaked at 786 MB on the pool, and passed the isolate's memory limit).
const MaxDecodedBytesPerPixel = 4

// Resampler scratch. x/image/draw's Catmull-Rom resamples columns first,
// into a scratch of dst width × SOURCE height × 32 bytes, then rows: a
// shape that widens while it shrinks rows (1×50,000 to 20,000×1, a
// 178-byte PNG) asked for 32 GB and killed the worker. The scratch is
// bounded by what an honest resize between the same decoded and scaled
// sizes needs: one that keeps the aspect ratio scales both sides by one
// factor s, and its scratch is s·decoded = scaled/s = √(decoded·scaled)
// entries. Any resize may take twice that (an aspect change of up to 4×),
// or MinScratch (8 Mi entries, 256 MiB), so that no thumbnail, conversion
// or ordinary stretch is touched: a 4000×3000 photo to 400 px needs 0.15
// M entries (a JPEG at 1/8 scale), a 12 MP photo to 3000 px 9 M, a
// 1080×30,000 screenshot to 400 px wide 12 M, all exactly their √. Past
// the budget the rows are first averaged in boxes of k (libvips's
// shrink-then-reduce: one pass over the source), down to twice the scaled
// height or as far as the budget needs, never below the scaled height; a
// shape that cannot be brought under (its scaled image alone is past the
// budget: over 8 Mi pixels and 4× the decoded area, with the aspect ratio
// changed more than 4×) is refused, and so is an animation past it (one scaler
// serves every frame; nothing is shrunk).
//
// Whatever the sizes, no resize takes more than MaxScratch (16 Mi entries,
// 512 MiB, the isolate's default memory limit): twice an honest √ of two
// 50 MP images is 3.2 GB, and two such requests at once ran the worker out
// of memory (the second review). Near-size resizes of large images that
// need more are refused; a banded resampler of our own would lift it.
//
// An animation's resampling work is frames × scaled width × canvas height
// (one column pass per frame); it may be at most 4 × --image-max-pixels,
// what a 4× upscale of the largest animation the input budget admits
// costs: 1,000 frames of a 223×223 canvas asked for 37,449×1 burned 30 s.
const (
	MinScratch = 8 << 20  // entries of 32 bytes
	MaxScratch = 16 << 20 // entries of 32 bytes: 512 MiB
	maxScratch = MaxScratch
	// A source side longer than JPEG's longest (a PNG may declare 2^31) is
	// box-shrunk to at most twice its scaled side first: the resampler's
	// weights cost 64 bytes per source column or row (3.2 GB for a
	// 50,000,000×1 PNG).
	maxResampledSide = 1 << 16
)

// resizePlan is how an image becomes its output, decided once from the
// declared sizes before anything is decoded.
type resizePlan struct {
	outW, outH       int // the output
	scaledW, scaledH int // the resampled image, before cropping or padding
	denom            int // JPEG's IDCT scale: 1, 2, 4 or 8
	decW, decH       int // the decoded image, upright (a GIF's canvas)
	boxW, boxH       int // box-shrink factors before the resampler; 1: none
}

// copies says the scaled size is the decoded size (a format conversion):
// the image is drawn onto the output, not resampled.
func (p resizePlan) copies() bool { return p.scaledW == p.decW && p.scaledH == p.decH }

// scratch is the resampler's scratch, in entries of 32 bytes.
func (p resizePlan) scratch() int64 {
	if p.copies() {
		return 0
	}
	return int64(p.scaledW) * int64(max(1, p.decH/p.boxH)) // the rows boxShrink keeps
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// scratchBudget is the resampler's scratch allowed between decoded and
// scaled images of these sizes, in entries of 32 bytes.
func scratchBudget(decW, decH, scaledW, scaledH int) int64 {
	honest := 2 * math.Sqrt(float64(decW)*float64(decH)*float64(scaledW)*float64(scaledH))
	return int64(min(max(honest, MinScratch), maxScratch))
}

// plan checks the declared size against the bounds and decides the output
// size, the scaled size before cropping or padding, JPEG's DCT scale, and
// whether the source is box-shrunk first or refused for its resampler's
// scratch.
func (r resizeReq) plan(h imageHeader) (p resizePlan, err error) {
	// The frame cap holds whatever is decoded (a 10,000-frame GIF is hostile);
	// the pixel budget counts the frames that will be decoded.
	if h.Frames > r.maxFrames {
		return p, unprocessable(CodeImageTooLarge, "%s has %d frames; the limit is %d", h.Format, h.Frames, r.maxFrames)
	}
	frames := 1
	if r.allFrames && h.Format == "gif" {
		frames = h.Frames
	}
	px := int64(h.Width) * int64(h.Height) * int64(frames)
	if px > int64(r.maxPixels) {
		return p, unprocessable(CodeImageTooLarge, "%s declares %d×%d×%d frames = %d pixels; the limit is %d",
			h.Format, h.Width, h.Height, frames, px, r.maxPixels)
	}
	if bpp := max(h.bytesPerPixel, 1); px*int64(bpp) > MaxDecodedBytesPerPixel*int64(r.maxPixels) {
		return p, unprocessable(CodeImageTooLarge, "%s of %d×%d pixels × %d frames decodes to %d bytes a pixel, %d MB; the limit is %d MB (%d bytes a pixel of %d)",
			h.Format, h.Width, h.Height, frames, bpp, px*int64(bpp)/1e6, MaxDecodedBytesPerPixel*int64(r.maxPixels)/1e6, MaxDecodedBytesPerPixel, r.maxPixels)
	}
	srcW, srcH := h.Width, h.Height
	if h.Orientation >= 5 { // rotated by 90°: the upright image is transposed
		srcW, srcH = srcH, srcW
	}
	outW, outH := r.width, r.height
	ratio := float64(srcW) / float64(srcH)
	switch {
	case outW == 0:
		outW = max(1, int(float64(outH)*ratio+0.5))
	case outH == 0:
		outH = max(1, int(float64(outW)/ratio+0.5))
	}
	scaledW, scaledH := outW, outH
	switch r.fit {
	case "inside", "contain": // fit within the box, keep the aspect ratio
		if float64(outW)/float64(outH) > ratio {
			scaledW = max(1, int(float64(outH)*ratio+0.5))
		} else {
			scaledH = max(1, int(float64(outW)/ratio+0.5))
		}
		if r.fit == "inside" {
			outW, outH = scaledW, scaledH
		}
	case "cover": // fill the box, crop the overflow
		if float64(outW)/float64(outH) > ratio {
			scaledH = max(1, int(float64(outW)/ratio+0.5))
		} else {
			scaledW = max(1, int(float64(outH)*ratio+0.5))
		}
	}
	if !r.enlarge {
		// imgproxy's enlarge=false, the default: never scale up. What
		// keeps the aspect ratio shrinks as a whole, box included, until
		// the scaled image is within the source (a 100 px wide image asked
		// for at 200 stays 100 wide; cover of a box bigger than the source
		// crops the source to the box's shape); fill clamps each side.
		if r.fit == "fill" {
			scaledW, scaledH = min(scaledW, srcW), min(scaledH, srcH)
			outW, outH = scaledW, scaledH
		} else if k := min(float64(srcW)/float64(scaledW), float64(srcH)/float64(scaledH)); k < 1 {
			shrink := func(n int) int { return max(1, int(float64(n)*k+0.5)) }
			scaledW, scaledH, outW, outH = shrink(scaledW), shrink(scaledH), shrink(outW), shrink(outH)
		}
	}
	maxSide := 65535 // JPEG, PNG and GIF store 16-bit sides
	if r.format == "webp" {
		maxSide = 16383
	}
	if outW > maxSide || outH > maxSide {
		return p, unprocessable(CodeImageTooLarge, "output of %d×%d pixels exceeds %s's limit of %d per side",
			outW, outH, r.format, maxSide)
	}
	// Every output frame is resampled, dithered and encoded: the output
	// budget counts them all, as the input budget does (1,000 frames of 1×1
	// asked for at 7000×7000 are 49 billion output pixels).
	if px := int64(outW) * int64(outH) * int64(frames); px > int64(r.maxOut) || int64(scaledW)*int64(scaledH)*int64(frames) > 4*int64(r.maxOut) {
		return p, unprocessable(CodeImageTooLarge, "output of %d×%d pixels × %d frames exceeds the limit of %d pixels",
			outW, outH, frames, r.maxOut)
	}
	p = resizePlan{outW: outW, outH: outH, scaledW: scaledW, scaledH: scaledH, denom: 1, decW: srcW, decH: srcH, boxW: 1, boxH: 1}
	if h.Format == "jpeg" {
		// The smallest DCT scale that still leaves at least the scaled
		// size; jpegn rounds the scaled sides up.
		for _, d := range []int{8, 4, 2} {
			if srcW/d >= scaledW && srcH/d >= scaledH {
				p.denom, p.decW, p.decH = d, ceilDiv(srcW, d), ceilDiv(srcH, d)
				break
			}
		}
	}
	if p.copies() {
		return p, nil
	}
	budget := scratchBudget(p.decW, p.decH, scaledW, scaledH)
	if frames > 1 {
		// One scaler serves every frame of an animation, composited on the
		// canvas: its scratch is scaledW × canvas height; no box shrink.
		if s := p.scratch(); s > budget {
			return p, scratchError(p, s, budget)
		}
		if work := p.scratch() * int64(frames); work > 4*int64(r.maxPixels) {
			return p, unprocessable(CodeImageTooLarge, "resampling %d frames of %d×%d to %d×%d is %d column passes of work; the limit is %d",
				frames, p.decW, p.decH, scaledW, scaledH, work, 4*int64(r.maxPixels))
		}
		return p, nil
	}
	if p.decW > maxResampledSide && p.decW > 2*scaledW {
		p.boxW = p.decW / (2 * scaledW)
	}
	if p.decH > maxResampledSide && p.decH > 2*scaledH {
		p.boxH = p.decH / (2 * scaledH)
	}
	if s := int64(scaledW) * int64(p.decH); s > budget {
		// Rows averaged k at a time, into at least twice the scaled
		// height (libvips's gap of 2) or fewer if the budget needs it, but
		// never fewer than the scaled height: Catmull-Rom still reduces.
		k := max(p.boxH, p.decH/(2*scaledH), int(ceilDiv64(s, budget)))
		if k > p.decH/scaledH {
			return p, scratchError(p, s, budget)
		}
		p.boxH = k
	}
	return p, nil
}

func ceilDiv64(a, b int64) int64 { return (a + b - 1) / b }

func scratchError(p resizePlan, entries, budget int64) error {
	return unprocessable(CodeImageTooLarge, "resampling %d×%d to %d×%d needs %d MiB of scratch (%d entries of 32 bytes); the limit for these sizes is %d MiB",
		p.decW, p.decH, p.scaledW, p.scaledH, entries>>15, entries, budget>>15)
}

func checkResizeParams(p Params) error {
	_, err := parseResize(p)
	return err
}

func checkResize(p Params, input []byte) error {
	r, err := parseResize(p)
	if err != nil {
		return err
	}
	h, err := readHeader(input, r.maxFrames)
	if err != nil {
		return err
	}
	_, err = r.plan(h)
	return err
}

func runResize(ctx context.Context, p Params, input []byte) ([]byte, error) {
	r, err := parseResize(p)
	if err != nil {
		return nil, err
	}
	h, err := readHeader(input, r.maxFrames)
	if err != nil {
		return nil, err
	}
	pl, err := r.plan(h)
	if err != nil {
		return nil, err
	}
	if r.allFrames && h.Format == "gif" {
		return resizeAnimation(ctx, input, r, pl)
	}
	src, err := decode(ctx, h, input, pl.denom)
	if cerr := ctx.Err(); cerr != nil { // the decoder's error is ctx's, or moot
		return nil, cerr
	}
	if err != nil {
		return nil, unprocessable(CodeBadImage, "corrupt or truncated %s: %v", h.Format, err)
	}
	if pl.boxW > 1 || pl.boxH > 1 {
		if src, err = boxShrink(ctx, src, pl.boxW, pl.boxH); err != nil {
			return nil, err
		}
	}
	dst := scaleInto(src, r, pl.outW, pl.outH, pl.scaledW, pl.scaledH)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return encode(ctx, dst, r)
}

// scaleInto resamples src to scaledW×scaledH, centred in a new outW×outH
// image: cropped by cover, padded by contain.
func scaleInto(src image.Image, r resizeReq, outW, outH, scaledW, scaledH int) *image.RGBA {
	dst := image.NewRGBA(image.Rect(0, 0, outW, outH))
	scaleOnto(dst, draw.CatmullRom, src, r, scaledW, scaledH)
	return dst
}

// scaleOnto is scaleInto onto dst, whatever dst held, with sc, which
// resamples with Catmull-Rom: draw.CatmullRom, or a scaler of
// draw.CatmullRom.NewScaler for the sizes, which keeps its weights and
// scratch buffer from one call to the next. A src of the scaled size is
// drawn as it is (Catmull-Rom at scale 1 weighs one pixel by 1), with no
// scratch.
func scaleOnto(dst *image.RGBA, sc draw.Scaler, src image.Image, r resizeReq, scaledW, scaledH int) {
	switch {
	case r.background.A != 0:
		draw.Draw(dst, dst.Bounds(), image.NewUniform(r.background), image.Point{}, draw.Src)
	case r.fit == "contain" && r.format == "gif":
		draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	default:
		clear(dst.Pix)
	}
	b := dst.Bounds()
	off := placement(r, src, b.Dx(), b.Dy(), scaledW, scaledH)
	dr := image.Rect(0, 0, scaledW, scaledH).Add(off)
	if src.Bounds().Size() == dr.Size() {
		draw.Draw(dst, dr, src, src.Bounds().Min, draw.Over)
		return
	}
	sc.Scale(dst, dr, src, src.Bounds(), draw.Over, nil)
}

// resizeAnimation resizes every frame of a GIF. Frames are sub-rectangles
// drawn over what the previous frame's disposal method left, so each is
// composited on a full canvas first, then resampled and re-quantised (Plan 9
// palette, Floyd-Steinberg), keeping delays and the loop count.
func resizeAnimation(ctx context.Context, input []byte, r resizeReq, pl resizePlan) ([]byte, error) {
	if r.smart { // one crop for every frame: a smart one would move from frame to frame
		r.smart, r.gravityX, r.gravityY = false, 0.5, 0.5
	}
	outW, outH, scaledW, scaledH := pl.outW, pl.outH, pl.scaledW, pl.scaledH
	g, err := gif.DecodeAll(ctxReader{ctx, bytes.NewReader(input)})
	if cerr := ctx.Err(); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, unprocessable(CodeBadImage, "corrupt or truncated gif: %v", err)
	}
	var q plan9Ditherer
	bounds := image.Rect(0, 0, g.Config.Width, g.Config.Height)
	canvas, saved := image.NewRGBA(bounds), (*image.RGBA)(nil)
	// One scaler and one output buffer serve every frame: the resampler's
	// weights and scratch (dw×sh×32 bytes) were most of what an animation
	// allocated, 895 MB for 1,000 frames of 200² to 100² (BenchmarkImageLargestAllowed).
	// plan bounded the scratch (scaledW × canvas height) from the
	// declared canvas, which is g.Config's.
	sc := draw.CatmullRom.NewScaler(scaledW, scaledH, bounds.Dx(), bounds.Dy())
	scaled := image.NewRGBA(image.Rect(0, 0, outW, outH))
	out := &gif.GIF{LoopCount: g.LoopCount, Config: image.Config{Width: outW, Height: outH}}
	for i, frame := range g.Image {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		disposal := byte(0)
		if i < len(g.Disposal) {
			disposal = g.Disposal[i]
		}
		if disposal == gif.DisposalPrevious {
			if saved == nil {
				saved = image.NewRGBA(bounds)
			}
			copy(saved.Pix, canvas.Pix)
		}
		draw.Draw(canvas, frame.Bounds(), frame, frame.Bounds().Min, draw.Over)
		scaleOnto(scaled, sc, canvas, r, scaledW, scaledH)
		pal, err := q.dither(ctx, scaled)
		if err != nil {
			return nil, err
		}
		out.Image = append(out.Image, pal)
		if i < len(g.Delay) {
			out.Delay = append(out.Delay, g.Delay[i])
		} else {
			out.Delay = append(out.Delay, 0)
		}
		switch disposal {
		case gif.DisposalBackground:
			draw.Draw(canvas, frame.Bounds(), image.Transparent, image.Point{}, draw.Src)
		case gif.DisposalPrevious:
			canvas, saved = saved, canvas
		}
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, out); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decode decodes the image upright, a JPEG at 1/denom scale in the IDCT
// (plan's choice). Decoders that read as they go stop once ctx is done;
// jpegn reads all first (its work is bounded by the declared size and
// MaxJPEGScanPasses).
func decode(ctx context.Context, h imageHeader, input []byte, denom int) (image.Image, error) {
	r := ctxReader{ctx, bytes.NewReader(input)}
	switch h.Format {
	case "jpeg":
		// At 1/8 (a thumbnail of a large photo) from the DC coefficients
		// alone (internal/jpegdc: 1.8× faster than jpegn for a baseline
		// file, 50× for a progressive one, whose AC scans it skips); a
		// kind it leaves (CMYK, arithmetic coding, 4:1:1…) goes to jpegn.
		if denom == 8 {
			img, err := jpegdc.Decode(input)
			if err == nil {
				return orient(img, h.Orientation), nil
			}
			if !errors.Is(err, jpegdc.ErrUnsupported) {
				return nil, err
			}
		}
		// A *bytes.Reader, which jpegn sizes its copy of the input by.
		return jpegn.Decode(bytes.NewReader(input), &jpegn.Options{ScaleDenom: denom, AutoRotate: true, UpsampleMethod: jpegn.CatmullRom})
	case "png":
		return png.Decode(r)
	case "gif":
		return gif.Decode(r) // the first frame only
	case "webp":
		return webp.Decode(r)
	case "bmp":
		return bmp.Decode(r)
	case "tiff":
		return tiff.Decode(r)
	}
	return nil, errors.New("unsupported format")
}

// encode encodes img as r asks. A GIF is dithered by plan9Ditherer, which
// stops once ctx is done; the other encoders' work is bounded by the output
// budget: at 49 MP, with the resize, JPEG 0.7 s, PNG 0.5 s and WebP 1.9 s
// (BenchmarkImageLargestAllowed).
func encode(ctx context.Context, img *image.RGBA, r resizeReq) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch r.format {
	case "jpeg":
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: r.quality})
	case "png":
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, img)
	case "gif":
		var pal *image.Paletted
		if pal, err = new(plan9Ditherer).dither(ctx, img); err == nil {
			err = gif.Encode(&buf, pal, nil)
		}
	case "webp":
		err = encodeWebP(&buf, img)
	}
	return buf.Bytes(), err
}

// encodeWebP is nativewebp's lossless encoder, which panics (an index of
// -1 in its Huffman writer, v0.9.3) on some images of very few colours,
// where every pixel after the first is a colour-cache hit: a 1×1 GIF frame
// asked for as WebP did. Such an image is encoded again through the
// encoder's colour-indexed path, the same pixels in an exact palette; one
// with more than 256 colours, or that panics there too, is an error.
func encodeWebP(buf *bytes.Buffer, img image.Image) (err error) {
	try := func(img image.Image) (err error) {
		defer func() {
			if v := recover(); v != nil {
				err = fmt.Errorf("handlers: webp encoder panicked: %v", v)
			}
		}()
		buf.Reset()
		return nativewebp.Encode(buf, img, nil)
	}
	if err = try(img); err == nil {
		return nil
	}
	if pal := exactPalette(img); pal != nil {
		return try(pal)
	}
	return err
}

// exactPalette is img as an image.Paletted of its own colours, or nil if it
// has more than 256.
func exactPalette(img image.Image) *image.Paletted {
	b := img.Bounds()
	index := map[color.NRGBA]uint8{}
	var pal color.Palette
	out := image.NewPaletted(b, nil)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			i, ok := index[c]
			if !ok {
				if len(pal) == 256 {
					return nil
				}
				i = uint8(len(pal))
				index[c] = i
				pal = append(pal, c)
			}
			out.Pix[out.PixOffset(x, y)] = i
		}
	}
	out.Palette = pal
	return out
}

// orient turns img upright by its EXIF orientation (2–8), as jpegn's
// AutoRotate does; 1 (or none) returns img as it is.
func orient(img image.Image, o int) image.Image {
	if o < 2 || o > 8 {
		return img
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for sy := range h {
		for sx := range w {
			var dx, dy int
			switch o {
			case 2:
				dx, dy = w-1-sx, sy
			case 3:
				dx, dy = w-1-sx, h-1-sy
			case 4:
				dx, dy = sx, h-1-sy
			case 5:
				dx, dy = sy, sx
			case 6:
				dx, dy = h-1-sy, sx
			case 7:
				dx, dy = h-1-sy, w-1-sx
			case 8:
				dx, dy = sy, w-1-sx
			}
			dst.Set(dx, dy, img.At(b.Min.X+sx, b.Min.Y+sy))
		}
	}
	return dst
}

// gravities are gravity='s values and where each puts the scaled image in
// its box, as fractions of the room (or of the overflow, which is cropped).
var gravities = map[string][2]float64{
	"centre": {0.5, 0.5}, "center": {0.5, 0.5}, "ce": {0.5, 0.5}, "smart": {0.5, 0.5}, "sm": {0.5, 0.5},
	"north": {0.5, 0}, "no": {0.5, 0}, "south": {0.5, 1}, "so": {0.5, 1},
	"east": {1, 0.5}, "ea": {1, 0.5}, "west": {0, 0.5}, "we": {0, 0.5},
	"north-east": {1, 0}, "noea": {1, 0}, "north-west": {0, 0}, "nowe": {0, 0},
	"south-east": {1, 1}, "soea": {1, 1}, "south-west": {0, 1}, "sowe": {0, 1},
}

// placement is where the scaledW×scaledH image goes in a boxW×boxH box: by
// its gravity, or, for a smart crop, where the window the box keeps holds
// the most detail along the side that overflows.
func placement(r resizeReq, src image.Image, boxW, boxH, scaledW, scaledH int) image.Point {
	at := func(room int, f float64) int { return int(float64(room) * f) } // centre: room/2, as before gravity
	off := image.Pt(at(boxW-scaledW, r.gravityX), at(boxH-scaledH, r.gravityY))
	if !r.smart {
		return off
	}
	sb := src.Bounds()
	switch {
	case scaledW > boxW && sb.Dx() > 1:
		keep := float64(boxW) / float64(scaledW) // the share of the width the box keeps
		start := bestWindow(detail(src, true), keep)
		off.X = -int(math.Round(start * float64(scaledW)))
	case scaledH > boxH && sb.Dy() > 1:
		keep := float64(boxH) / float64(scaledH)
		start := bestWindow(detail(src, false), keep)
		off.Y = -int(math.Round(start * float64(scaledH)))
	}
	return off
}

// detail is src's detail per column (cols) or per row: the sum of the
// luminance differences to its neighbours across and along, on a grid of
// at most 256 samples a side, so that it costs the same on any image.
func detail(src image.Image, cols bool) []float64 {
	b := src.Bounds()
	nx, ny := min(b.Dx(), 256), min(b.Dy(), 256)
	lum := func(i, j int) float64 {
		r, g, bl, _ := src.At(b.Min.X+i*b.Dx()/nx, b.Min.Y+j*b.Dy()/ny).RGBA()
		return 0.299*float64(r) + 0.587*float64(g) + 0.114*float64(bl)
	}
	grid := make([][]float64, ny)
	for j := range grid {
		grid[j] = make([]float64, nx)
		for i := range grid[j] {
			grid[j][i] = lum(i, j)
		}
	}
	n := ny
	if cols {
		n = nx
	}
	out := make([]float64, n)
	for j := range ny {
		for i := range nx {
			d := 0.0
			if i+1 < nx {
				d += math.Abs(grid[j][i+1] - grid[j][i])
			}
			if j+1 < ny {
				d += math.Abs(grid[j+1][i] - grid[j][i])
			}
			if cols {
				out[i] += d
			} else {
				out[j] += d
			}
		}
	}
	return out
}

// bestWindow is where, as a fraction of len(d), the window of keep × len(d)
// consecutive entries with the largest sum starts.
func bestWindow(d []float64, keep float64) float64 {
	w := max(1, min(len(d), int(math.Round(keep*float64(len(d))))))
	sum := 0.0
	for _, v := range d[:w] {
		sum += v
	}
	best, at := sum, 0
	for i := w; i < len(d); i++ {
		sum += d[i] - d[i-w]
		if sum > best {
			best, at = sum, i-w+1
		}
	}
	return float64(at) / float64(len(d))
}
