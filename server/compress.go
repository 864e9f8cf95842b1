package server

import (
	"bytes"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/molecule-man/go-brrr"
	"github.com/valyala/fasthttp"
)

// minCompress is the smallest body worth compressing: below it the encoding
// headers and CPU cost more than they save.
const minCompress = 1024

// compressResponse encodes a compressible response body with the best
// encoding the client accepts: zstd, then br, then gzip (klauspost/compress
// and go-brrr, pure Go). Only JSON and text are compressed: outputs that are
// compressed already (a /v1/compress result, images) keep their bytes.
func compressResponse(ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	body := resp.Body()
	if len(body) < minCompress || len(resp.Header.ContentEncoding()) > 0 || !compressible(resp.Header.ContentType()) {
		return
	}
	enc := negotiate(string(ctx.Request.Header.Peek(fasthttp.HeaderAcceptEncoding)))
	if enc == "" {
		return
	}
	var out []byte
	switch enc {
	case "zstd":
		out = responseZstd().EncodeAll(body, make([]byte, 0, len(body)/3))
	case "br":
		var err error
		if out, err = brrr.Compress(body, 4); err != nil {
			return
		}
	case "gzip":
		buf := bytes.NewBuffer(make([]byte, 0, len(body)/3))
		w := gzipWriters.Get().(*gzip.Writer)
		w.Reset(buf)
		w.Write(body)
		w.Close()
		gzipWriters.Put(w)
		out = buf.Bytes()
	}
	resp.SetBody(out)
	resp.Header.Set(fasthttp.HeaderContentEncoding, enc)
	resp.Header.Add(fasthttp.HeaderVary, fasthttp.HeaderAcceptEncoding)
}

// The encoder is built on first use, not at init: every process start pays
// for package initialisation, isolated children included.
var (
	responseZstd = sync.OnceValue(func() *zstd.Encoder {
		enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		return enc
	})
	gzipWriters = sync.Pool{New: func() any { w, _ := gzip.NewWriterLevel(nil, 5); return w }}
)

func compressible(ct []byte) bool {
	return bytes.HasPrefix(ct, []byte("application/json")) || bytes.HasPrefix(ct, []byte("text/"))
}

// negotiate picks zstd, br or gzip from an Accept-Encoding header, honouring
// q=0 (refused) and preferring the server's order among the accepted ones.
func negotiate(accept string) string {
	if accept == "" {
		return ""
	}
	ok := map[string]bool{}
	for _, part := range strings.Split(accept, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		name = strings.ToLower(strings.TrimSpace(name))
		q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		ok[name] = !(q == "q=0" || q == "q=0.0" || q == "q=0.00" || q == "q=0.000")
	}
	for _, enc := range []string{"zstd", "br", "gzip"} {
		if accepted, named := ok[enc]; named && accepted || !named && ok["*"] {
			return enc
		}
	}
	return ""
}
