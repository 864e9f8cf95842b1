package server

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/molecule-man/go-brrr"
	"github.com/valyala/fasthttp"
)

func TestNegotiate(t *testing.T) {
	for accept, want := range map[string]string{
		"":                         "",
		"identity":                 "",
		"gzip":                     "gzip",
		"gzip, deflate, br, zstd":  "zstd",
		"gzip, br":                 "br",
		"zstd;q=0, br;q=0.5, gzip": "br",
		"ZSTD":                     "zstd",
		"*":                        "zstd",
		"*, zstd;q=0":              "br",
		"br;q=0,gzip;q=0":          "",
	} {
		if got := negotiate(accept); got != want {
			t.Errorf("negotiate(%q) = %q; want %q", accept, got, want)
		}
	}
}

func TestResponseCompression(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	bigJSON := `{"data":"` + strings.Repeat("compressible ", 500) + `"}`
	srv.Router.Handle("GET", "/json", func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(bigJSON)
	})
	srv.Router.Handle("GET", "/zst", func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/zstd")
		ctx.SetBodyString(bigJSON)
	})
	c := serveInMemory(t, srv)
	get := func(path, accept string) *fasthttp.Response {
		req, resp := fasthttp.AcquireRequest(), &fasthttp.Response{}
		req.SetRequestURI("http://worker" + path)
		req.Header.Set("Accept-Encoding", accept)
		if err := c.Do(req, resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	decode := map[string]func([]byte) ([]byte, error){
		"zstd": func(b []byte) ([]byte, error) { d, _ := zstd.NewReader(nil); return d.DecodeAll(b, nil) },
		"br":   func(b []byte) ([]byte, error) { return brrr.Decompress(b) },
		"gzip": func(b []byte) ([]byte, error) {
			r, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, err
			}
			return io.ReadAll(r)
		},
	}
	for enc, dec := range decode {
		resp := get("/json", enc)
		if got := string(resp.Header.ContentEncoding()); got != enc {
			t.Errorf("Accept-Encoding %s: Content-Encoding %q", enc, got)
			continue
		}
		body, err := dec(resp.Body())
		if err != nil || string(body) != bigJSON || len(resp.Body()) >= len(bigJSON)/4 {
			t.Errorf("%s: %d → %d bytes, decoded %d, %v", enc, len(bigJSON), len(resp.Body()), len(body), err)
		}
		if !strings.Contains(string(resp.Header.Peek("Vary")), "Accept-Encoding") {
			t.Errorf("%s: no Vary: Accept-Encoding", enc)
		}
	}
	if resp := get("/zst", "zstd"); len(resp.Header.ContentEncoding()) != 0 || string(resp.Body()) != bigJSON {
		t.Errorf("an already-compressed type was encoded again")
	}
	if resp := get("/health", "zstd"); len(resp.Header.ContentEncoding()) != 0 {
		t.Errorf("a %d-byte body was compressed; want only bodies ≥ %d bytes", len(resp.Body()), minCompress)
	}
}
