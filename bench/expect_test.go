package bench

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// countingListener counts the bytes its connections read.
type countingListener struct {
	net.Listener
	read *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return countingConn{c, l.read}, err
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

// With Expect: 100-continue among its headers, the load generator waits
// for the server's answer to the headers: a refusal costs no upload, and an
// acceptance gets the body and is answered, on a kept-alive connection.
func TestExpectContinueIsHonoured(t *testing.T) {
	body := make([]byte, 1<<20)
	for _, tc := range []struct {
		name     string
		refuse   bool
		status   string
		maxBytes int64 // read by the server over the whole run
	}{
		{"refused from the headers", true, "503", 40 << 10},
		{"continued", false, "200", 21 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var read, handled, conns atomic.Int64
			srv := &fasthttp.Server{
				Handler: func(ctx *fasthttp.RequestCtx) {
					handled.Add(1)
					if len(ctx.PostBody()) != len(body) {
						ctx.SetStatusCode(400)
					}
				},
				ExpectHandler: func(ctx *fasthttp.RequestCtx) int {
					if tc.refuse {
						return fasthttp.StatusServiceUnavailable
					}
					return fasthttp.StatusContinue
				},
				ConnState: func(_ net.Conn, s fasthttp.ConnState) {
					if s == fasthttp.StateNew {
						conns.Add(1)
					}
				},
			}
			go srv.Serve(countingListener{ln, &read})
			defer srv.Shutdown()
			tg := Target{Method: "POST", URL: "http://" + ln.Addr().String() + "/x",
				Header: [][2]string{{"Expect", "100-continue"}}, Body: body}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := Run(ctx, tg, Options{Concurrency: 2, Requests: 20, Timeout: 5 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status[tc.status] != 20 || len(r.Errors) != 0 {
				t.Errorf("status %v, errors %v; want 20 × %s", r.Status, r.Errors, tc.status)
			}
			if n := read.Load(); n > tc.maxBytes {
				t.Errorf("the server read %d bytes for 20 requests of 1 MiB; want at most %d", n, tc.maxBytes)
			}
			if tc.refuse && handled.Load() != 0 {
				t.Errorf("handler ran %d times; want 0", handled.Load())
			}
			if !tc.refuse && conns.Load() != 2 {
				t.Errorf("%d connections for 20 accepted requests at c=2; want 2, kept alive", conns.Load())
			}
		})
	}
}
