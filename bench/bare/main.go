// Command bare is the per-request cost baseline of hybrid's request path: a
// bare fasthttp server, one process, with a hybrid worker's routes (/health,
// /ready, a JSON 404, sha256 inline) and nothing else. Its /ready and sha256
// bodies are a worker's; its /health is a small fixed document, where a
// worker's carries its pool and isolate sections. bench/RESULTS.md compares hybrid's server CPU per request with it,
// measured in the same run:
//
//	go run ./bench/bare --addr 127.0.0.1:9090
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"log"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "address to serve on")
	flag.Parse()
	pid := strconv.Itoa(os.Getpid())
	var requests atomic.Uint64
	h := func(ctx *fasthttp.RequestCtx) {
		n := requests.Add(1)
		ctx.SetContentType("application/json")
		switch string(ctx.Path()) {
		case "/health":
			ctx.SetBodyString(`{"status":"ok","pid":` + pid + `,"requests":` + strconv.FormatUint(n, 10) + "}\n")
		case "/ready":
			ctx.SetBodyString(`{"status":"ready","pid":` + pid + "}\n")
		case "/v1/hash/sha256":
			sum := sha256.Sum256(ctx.PostBody())
			b := append(ctx.Response.Body()[:0], `{"algo":"sha256","digest":"`...)
			b = hex.AppendEncode(b, sum[:])
			b = strconv.AppendInt(append(b, `","size":`...), int64(len(ctx.PostBody())), 10)
			ctx.SetBody(append(b, "}\n"...))
		default:
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetBodyString(`{"error":{"code":"not_found","message":"no route"}}` + "\n")
		}
	}
	s := &fasthttp.Server{Handler: h, NoDefaultServerHeader: true, MaxRequestBodySize: 32 << 20}
	log.Fatal(s.ListenAndServe(*addr))
}
